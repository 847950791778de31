/** Plain-TypeScript twin of assembly/compare.ts. `out` must be 4-byte aligned. */

import type { Heap } from "../heap.ts";
import { PAGE_SIZE, pageEqual } from "./page.ts";

/** Lists the pages of `ram` that differ from `shadow`. */
export function pagesCompare(heap: Heap, ram: number, shadow: number, pages: number, out: number): number {
  return compare(heap, ram, shadow, pages, out, false);
}

/** As {@link pagesCompare}, and copies each changed page into `shadow`. */
export function pagesCompareCopy(heap: Heap, ram: number, shadow: number, pages: number, out: number): number {
  return compare(heap, ram, shadow, pages, out, true);
}

function compare(heap: Heap, ram: number, shadow: number, pages: number, out: number, copy: boolean): number {
  const o = out >>> 2;
  let n = 0;
  for (let i = 0; i < pages; i++) {
    const offset = i * PAGE_SIZE;
    if (pageEqual(heap, ram + offset, shadow + offset)) continue;
    if (copy) heap.u8.copyWithin(shadow + offset, ram + offset, ram + offset + PAGE_SIZE);
    heap.u32[o + n++] = i;
  }
  return n;
}
