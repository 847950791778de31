/** Plain-TypeScript twin of assembly/gather.ts. `list`, `full` and `zeros` must be 4-byte aligned. */

import type { Heap } from "../heap.ts";
import { PAGE_SIZE, pageIsZero } from "./page.ts";
import { BAD_INDEX } from "./zero.ts";

/**
 * Copies the listed pages that are not all zero back to back at `out`, their indices at `full`,
 * and writes the zero pages' indices at `zeros`; returns how many were copied, or BAD_INDEX.
 */
export function pagesGather(heap: Heap, ram: number, pages: number, list: number, count: number, out: number, full: number, zeros: number): number {
  const u8 = heap.u8;
  const u32 = heap.u32;
  let k = 0;
  let z = 0;
  for (let i = 0; i < count; i++) {
    const index = u32[(list >>> 2) + i];
    if (index >= pages) return BAD_INDEX;
    const page = ram + index * PAGE_SIZE;
    if (pageIsZero(heap, page)) {
      u32[(zeros >>> 2) + z++] = index;
      continue;
    }
    u8.copyWithin(out + k * PAGE_SIZE, page, page + PAGE_SIZE);
    u32[(full >>> 2) + k++] = index;
  }
  return k;
}
