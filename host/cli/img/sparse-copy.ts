/**
 * Copies what a guest sees of one disk onto another while keeping the target sparse: ranges the
 * source's map reports as zero are never read, and granules that already read the same on the
 * target (zeros on a fresh image, the backing file's bytes under a new overlay) are not written.
 */

import type { Disk } from "../../disk/disk.ts";

/** Bytes read and compared at a time. */
const CHUNK = 1 << 20;
/** The smallest run left unwritten because the target already reads it so: qemu-img convert's default (-S 4k). */
export const SPARSE_GRANULE = 4096;
/** The source is mapped this much at a time, so a fragmented image's extent list stays small. */
const MAP_WINDOW = 1 << 30;

/** What a granule of source bytes needs on the target. */
const Need = {
  /** The target reads these bytes already. */
  Nothing: 0,
  /** Zeros over a backing file that is not zero there. */
  Zeroes: 1,
  /** The bytes themselves. */
  Data: 2,
} as const;
type Need = (typeof Need)[keyof typeof Need];

/**
 * Copies `source`'s contents to the same offsets of the freshly created `target` (at least as
 * large); `progress` hears how many bytes of the source are done.
 */
export function copySparse(source: Disk, target: Disk, progress: (done: number) => void): void {
  const data = new Uint8Array(Math.min(CHUNK, Math.max(source.size, 1)));
  const baseline = target.backing === null ? null : new Uint8Array(data.length);
  for (let window = 0; window < source.size; window += MAP_WINDOW) {
    for (const extent of source.map(window, Math.min(MAP_WINDOW, source.size - window))) {
      const end = extent.offset + extent.length;
      // An extent no layer holds reads as zeros, as does one whose metadata says so.
      const zero = extent.zero || !extent.present;
      if (zero && baseline === null) {
        progress(end);
        continue;
      }
      for (let at = extent.offset; at < end; at += data.length) {
        const length = Math.min(data.length, end - at);
        const bytes = data.subarray(0, length);
        if (zero) bytes.fill(0);
        else source.readInto(at, bytes);
        const base = baseline?.subarray(0, length);
        if (base !== undefined) target.readInto(at, base);
        writeWhatDiffers(target, at, bytes, base);
        progress(at + length);
      }
    }
  }
}

/** Writes `bytes` at `offset` of `target`, skipping granules it reads already (`base`: its current bytes; absent: zeros). */
function writeWhatDiffers(target: Disk, offset: number, bytes: Uint8Array, base: Uint8Array | undefined): void {
  let runStart = 0;
  let runNeed: Need = Need.Nothing;
  const flush = (end: number) => {
    if (runNeed === Need.Data) target.write(offset + runStart, bytes.subarray(runStart, end));
    else if (runNeed === Need.Zeroes) target.writeZeroes(offset + runStart, end - runStart);
  };
  for (let start = 0; start < bytes.length; start += SPARSE_GRANULE) {
    const end = Math.min(start + SPARSE_GRANULE, bytes.length);
    const granule = bytes.subarray(start, end);
    const need: Need = base === undefined
      ? (isZero(granule) ? Need.Nothing : Need.Data)
      : sameBytes(granule, base.subarray(start, end)) ? Need.Nothing : isZero(granule) ? Need.Zeroes : Need.Data;
    if (need !== runNeed) {
      flush(start);
      runStart = start;
      runNeed = need;
    }
  }
  flush(bytes.length);
}

/** True if every byte of `bytes` is zero. */
function isZero(bytes: Uint8Array): boolean {
  const words = wordsOf(bytes);
  for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
  for (let i = words.length * 4; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}

/** True if `a` and `b` (of the same length) hold the same bytes. */
function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  const wa = wordsOf(a);
  const wb = wordsOf(b);
  const words = Math.min(wa.length, wb.length);
  for (let i = 0; i < words; i++) if (wa[i] !== wb[i]) return false;
  for (let i = words * 4; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** The whole 32-bit words at the start of `bytes` (none if it is not 4-byte aligned), for comparing four bytes a step. */
function wordsOf(bytes: Uint8Array): Uint32Array {
  const count = bytes.byteOffset % 4 === 0 ? bytes.length >>> 2 : 0;
  return new Uint32Array(bytes.buffer, bytes.byteOffset, count);
}
