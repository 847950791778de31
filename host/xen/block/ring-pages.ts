/**
 * The pages of a shared ring seen as one flat byte range, as Xen backends and frontends map them
 * virtually contiguously in ring-ref0..N-1 order (../shared/reference/xen-blkif.md section 1.2):
 * the 64-byte header sits once at the start of page 0 and slots may straddle a page boundary.
 * Here the pages stay where they are (granted frames need not be adjacent) and each access is
 * split at page boundaries.
 */

import { ErrorCode, TandemError } from "../../errors.ts";
import { RING_PAGE_SIZE } from "../blkif/ring-layout.ts";

/** A page's bytes as they are now (a view; memory may grow, so it is asked for on every access). */
export type RingPage = () => Uint8Array;

/** The ring's pages in order. */
export class RingPages {
  /** Bytes of the whole ring. */
  readonly size: number;
  readonly #pages: readonly RingPage[];

  constructor(pages: readonly RingPage[]) {
    if (pages.length === 0) throw new TandemError(ErrorCode.BadArgument, "a ring has at least one page");
    this.#pages = pages;
    this.size = pages.length * RING_PAGE_SIZE;
  }

  /** Copies `target.length` bytes at ring offset `offset` into `target` (at `targetOffset`). */
  read(offset: number, target: Uint8Array, targetOffset = 0, length = target.length - targetOffset): void {
    this.#each(offset, length, (page, at, done, n) => target.set(page.subarray(at, at + n), targetOffset + done));
  }

  /** Copies `length` bytes of `source` from `sourceOffset` to ring offset `offset`. */
  write(offset: number, source: Uint8Array, sourceOffset = 0, length = source.length - sourceOffset): void {
    this.#each(offset, length, (page, at, done, n) => page.set(source.subarray(sourceOffset + done, sourceOffset + done + n), at));
  }

  /** The little-endian u32 at `offset` (a header index: 4-aligned, never straddling). */
  getU32(offset: number): number {
    const page = this.#page(offset);
    const at = offset % RING_PAGE_SIZE;
    return (page[at] | (page[at + 1] << 8) | (page[at + 2] << 16) | (page[at + 3] << 24)) >>> 0;
  }

  /** Stores a little-endian u32 at `offset` (4-aligned). */
  setU32(offset: number, value: number): void {
    const page = this.#page(offset);
    const at = offset % RING_PAGE_SIZE;
    page[at] = value & 0xff;
    page[at + 1] = (value >>> 8) & 0xff;
    page[at + 2] = (value >>> 16) & 0xff;
    page[at + 3] = (value >>> 24) & 0xff;
  }

  #page(offset: number): Uint8Array {
    if (!Number.isInteger(offset) || offset < 0 || offset % 4 !== 0 || offset + 4 > this.size) {
      throw new TandemError(ErrorCode.OutOfRange, `ring index at ${offset}: expected a 4-aligned offset inside the ${this.size}-byte ring`);
    }
    return this.#pages[Math.floor(offset / RING_PAGE_SIZE)]();
  }

  #each(offset: number, length: number, body: (page: Uint8Array, at: number, done: number, n: number) => void): void {
    if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new TandemError(ErrorCode.OutOfRange, `${length} bytes at ring offset ${offset}: the ring has ${this.size} bytes`);
    }
    let done = 0;
    while (done < length) {
      const position = offset + done;
      const at = position % RING_PAGE_SIZE;
      const n = Math.min(length - done, RING_PAGE_SIZE - at);
      body(this.#pages[Math.floor(position / RING_PAGE_SIZE)](), at, done, n);
      done += n;
    }
  }
}
