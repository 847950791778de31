/** Plain-TypeScript twin of assembly/zero.ts. `list` and `out` must be 4-byte aligned. */

import type { Heap } from "../heap.ts";
import { PAGE_SIZE, pageIsZero } from "./page.ts";

/** What the kernel returns when the list names a page at or past `pages`. */
export const BAD_INDEX = 0xffffffff;

/** Writes the indices of all-zero pages among the listed ones, in list order, at `out`. */
export function pagesZero(heap: Heap, ram: number, pages: number, list: number, count: number, out: number): number {
  const l = list >>> 2;
  const o = out >>> 2;
  let n = 0;
  for (let i = 0; i < count; i++) {
    const index = heap.u32[l + i];
    if (index >= pages) return BAD_INDEX;
    if (!pageIsZero(heap, ram + index * PAGE_SIZE)) continue;
    heap.u32[o + n++] = index;
  }
  return n;
}
