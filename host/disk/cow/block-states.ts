/**
 * The cow block-state bitmap in memory: 2 bits per block (cow-layout.ts `BlockState`), with the
 * sectors changed since the last write-out remembered, so a flush writes only those.
 */

import type { BlockFile } from "../block-file.ts";
import { BlockState, BLOCKS_PER_BYTE } from "./cow-layout.ts";

/** Bitmap bytes per dirty mark: a sector, the unit a disk writes whole. */
const SECTOR = 512;

/** The states of every block of one image. */
export class BlockStates {
  /** Blocks in the disk. */
  readonly count: number;
  readonly #bytes: Uint8Array;
  readonly #dirty: Uint8Array;
  #dirtyFrom = Number.POSITIVE_INFINITY;
  #dirtyTo = 0;

  /** Wraps `bytes`, the bitmap as stored (owned from now on), for `count` blocks. */
  constructor(bytes: Uint8Array, count: number) {
    this.#bytes = bytes;
    this.count = count;
    this.#dirty = new Uint8Array(Math.ceil(bytes.length / SECTOR));
  }

  /** The state of block `i`. */
  get(i: number): BlockState {
    return ((this.#bytes[Math.floor(i / BLOCKS_PER_BYTE)] >>> ((i % BLOCKS_PER_BYTE) * 2)) & 3) as BlockState;
  }

  /** Sets the state of block `i`, marking its sector dirty if it changed. */
  set(i: number, state: BlockState): void {
    const at = Math.floor(i / BLOCKS_PER_BYTE);
    const shift = (i % BLOCKS_PER_BYTE) * 2;
    const next = (this.#bytes[at] & ~(3 << shift)) | (state << shift);
    if (next === this.#bytes[at]) return;
    this.#bytes[at] = next;
    this.#markDirty(at);
  }

  /** True if some state changed since the last {@link writeDirty}. */
  get dirty(): boolean {
    return this.#dirtyFrom < this.#dirtyTo;
  }

  /** The end of the run of blocks from `from` (before `to`) that share `from`'s state. */
  runEnd(from: number, to: number): number {
    const state = this.get(from);
    let i = from + 1;
    while (i < to) {
      // Whole bytes of one repeated state are skipped at once.
      if (i % BLOCKS_PER_BYTE === 0 && i + BLOCKS_PER_BYTE <= to && this.#bytes[i / BLOCKS_PER_BYTE] === state * 0x55) {
        i += BLOCKS_PER_BYTE;
      } else if (this.get(i) === state) {
        i++;
      } else {
        break;
      }
    }
    return i;
  }

  /** The first block holding the reserved state 3, or -1. */
  firstReserved(): number {
    for (let at = 0; at < this.#bytes.length; at++) {
      const b = this.#bytes[at];
      if ((b & (b >>> 1) & 0x55) === 0) continue;
      for (let k = 0; k < BLOCKS_PER_BYTE; k++) {
        const i = at * BLOCKS_PER_BYTE + k;
        if (i < this.count && this.get(i) === BlockState.Reserved) return i;
      }
    }
    return -1;
  }

  /** Calls `visit` for every block whose state is not Absent, in order. */
  forEachPresent(visit: (block: number, state: BlockState) => void): void {
    for (let at = 0; at < this.#bytes.length; at++) {
      if (this.#bytes[at] === 0) continue;
      for (let k = 0; k < BLOCKS_PER_BYTE; k++) {
        const i = at * BLOCKS_PER_BYTE + k;
        if (i < this.count && this.get(i) !== BlockState.Absent) visit(i, this.get(i));
      }
    }
  }

  /** Bits past the last block that are set (they mean nothing; check counts them as leaks). */
  tailBitsSet(): number {
    let set = 0;
    for (let i = this.count; i < this.#bytes.length * BLOCKS_PER_BYTE; i++) if (this.get(i) !== BlockState.Absent) set++;
    return set;
  }

  /** Clears the bits past the last block. */
  clearTail(): void {
    for (let i = this.count; i < this.#bytes.length * BLOCKS_PER_BYTE; i++) this.set(i, BlockState.Absent);
  }

  /** Writes the changed sectors into `file` at `bitmapOffset`, each run of them in one write, and marks all clean. */
  writeDirty(file: BlockFile, bitmapOffset: number): void {
    let s = this.#dirtyFrom;
    while (s < this.#dirtyTo) {
      if (this.#dirty[s] === 0) {
        s++;
        continue;
      }
      let e = s;
      while (e < this.#dirtyTo && this.#dirty[e] !== 0) this.#dirty[e++] = 0;
      const from = s * SECTOR;
      file.write(bitmapOffset + from, this.#bytes.subarray(from, Math.min(this.#bytes.length, e * SECTOR)));
      s = e;
    }
    this.#dirtyFrom = Number.POSITIVE_INFINITY;
    this.#dirtyTo = 0;
  }

  #markDirty(at: number): void {
    const sector = Math.floor(at / SECTOR);
    this.#dirty[sector] = 1;
    if (sector < this.#dirtyFrom) this.#dirtyFrom = sector;
    if (sector + 1 > this.#dirtyTo) this.#dirtyTo = sector + 1;
  }
}
