/**
 * Which ranges of an image file read as zeros without holding data, for `map` (and so NBD block
 * status), as `qemu-img map` reports them: a hole in the host file is `zero`.
 *
 * Where the runtime can seek holes (SEEK_DATA/SEEK_HOLE on Bun and Deno, host/runtime/seek-data.ts)
 * the answer is the file system's, exactly as QEMU's. Node cannot, so there a file whose
 * allocated size covers its length has no holes (one fstat), and a sparse file is read in 4 KiB
 * blocks, up to a budget of bytes per map call, an all-zero block counting as a hole. The
 * difference: on Node a block written full of zeros also reads as a hole, where QEMU reports data;
 * and past the budget the rest is reported as data.
 */

import type { BlockFile } from "./block-file.ts";

/** The block size zeros are found in by reading: the usual file-system block, QEMU's granularity here. */
export const ZERO_BLOCK = 4096;
/** Bytes one map call may read looking for zeros (Node, sparse files only). */
export const MAP_READ_BUDGET = 64 << 20;
/** Bytes read per call while scanning. */
const SCAN_CHUNK = 1 << 20;

/** Finds zero ranges of one file for one map call, spending at most its read budget. */
export class ZeroFinder {
  readonly #file: BlockFile;
  #budget: number;
  #sparse: boolean | undefined;
  #buffer: Uint8Array | null = null;

  constructor(file: BlockFile, budget = MAP_READ_BUDGET) {
    this.#file = file;
    this.#budget = budget;
  }

  /** The ranges in [offset, offset + length) of the file that read as zeros without data, as [start, end) pairs in order. */
  ranges(offset: number, length: number): Array<[number, number]> {
    if (length <= 0) return [];
    const holes = this.#file.holes?.(offset, length);
    if (holes !== undefined) return holes;
    if (this.#file.allocatedBytes === undefined) return [];
    this.#sparse ??= this.#file.allocatedBytes() < this.#file.size();
    return this.#sparse ? this.#scan(offset, length) : [];
  }

  /** All-zero 4 KiB blocks (clipped to the range) found by reading, while the budget lasts. */
  #scan(offset: number, length: number): Array<[number, number]> {
    const end = offset + length;
    const out: Array<[number, number]> = [];
    const buffer = (this.#buffer ??= new Uint8Array(SCAN_CHUNK));
    for (let chunk = offset - (offset % ZERO_BLOCK); chunk < end && this.#budget > 0; chunk += SCAN_CHUNK) {
      const bytes = Math.min(SCAN_CHUNK, Math.ceil(end / ZERO_BLOCK) * ZERO_BLOCK - chunk);
      const view = buffer.subarray(0, bytes);
      const n = this.#file.read(chunk, view);
      view.fill(0, n);
      this.#budget -= bytes;
      for (let at = 0; at < bytes; at += ZERO_BLOCK) {
        if (!allZero(view, at, Math.min(bytes, at + ZERO_BLOCK))) continue;
        const start = Math.max(offset, chunk + at);
        const stop = Math.min(end, chunk + at + ZERO_BLOCK);
        const last = out[out.length - 1];
        if (last !== undefined && last[1] === start) last[1] = stop;
        else out.push([start, stop]);
      }
    }
    return out;
  }
}

function allZero(bytes: Uint8Array, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (bytes[i] !== 0) return false;
  return true;
}

/**
 * Splits the extent `base` (whose bytes lie at `base.fileOffset` in the file) by the zero ranges
 * of its host bytes: those parts become `zero` (keeping `data` as `zeroData` says: a hole in a raw
 * file is not data, a hole under an allocated qcow2 cluster still is, as QEMU reports them).
 */
export function splitByZeros<E extends { offset: number; length: number; zero: boolean; data: boolean; fileOffset?: number }>(
  base: E,
  finder: ZeroFinder,
  zeroData: boolean,
  out: E[],
): void {
  const host = base.fileOffset as number;
  let pos = 0;
  for (const [start, end] of finder.ranges(host, base.length)) {
    if (start - host > pos) out.push({ ...base, offset: base.offset + pos, length: start - host - pos, fileOffset: host + pos });
    out.push({ ...base, offset: base.offset + start - host, length: end - start, fileOffset: start, zero: true, data: zeroData });
    pos = end - host;
  }
  if (pos < base.length) out.push({ ...base, offset: base.offset + pos, length: base.length - pos, fileOffset: host + pos });
}
