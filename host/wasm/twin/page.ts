/**
 * Plain-TypeScript twin of assembly/page.ts. Pages may sit at any byte offset; aligned
 * pages are read as u32 words (four at a time), others byte by byte.
 */

import type { Heap } from "../heap.ts";

/** Bytes in a guest page. */
export const PAGE_SIZE = 4096;

/** Whether the pages at `a` and `b` hold the same bytes. */
export function pageEqual(heap: Heap, a: number, b: number): boolean {
  if (((a | b) & 3) === 0) {
    const w = heap.u32;
    for (let i = a >>> 2, j = b >>> 2, end = i + PAGE_SIZE / 4; i < end; i += 4, j += 4) {
      if (((w[i] ^ w[j]) | (w[i + 1] ^ w[j + 1]) | (w[i + 2] ^ w[j + 2]) | (w[i + 3] ^ w[j + 3])) !== 0) return false;
    }
    return true;
  }
  const u = heap.u8;
  for (let k = 0; k < PAGE_SIZE; k++) if (u[a + k] !== u[b + k]) return false;
  return true;
}

/** Whether every byte of the page at `p` is zero. */
export function pageIsZero(heap: Heap, p: number): boolean {
  if ((p & 3) === 0) {
    const w = heap.u32;
    for (let i = p >>> 2, end = i + PAGE_SIZE / 4; i < end; i += 4) {
      if ((w[i] | w[i + 1] | w[i + 2] | w[i + 3]) !== 0) return false;
    }
    return true;
  }
  const u = heap.u8;
  for (let k = 0; k < PAGE_SIZE; k++) if (u[p + k] !== 0) return false;
  return true;
}
