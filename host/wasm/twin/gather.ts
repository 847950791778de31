/**
 * Plain-TypeScript twin of assembly/gather.ts, step for step (so `out` ends byte for byte the
 * same, scratch slots included). `list`, `full` and `zeros` must be 4-byte aligned.
 */

import type { Heap } from "../heap.ts";
import { PAGE_SIZE, pageIsZero } from "./page.ts";
import { BAD_INDEX } from "./zero.ts";

/** Pages the kernel copies side by side. */
const GROUP = 4;

/**
 * Copies the listed pages that are not all zero back to back at `out`, their indices at `full`,
 * and writes the zero pages' indices at `zeros`; returns how many were copied, or BAD_INDEX.
 */
export function pagesGather(heap: Heap, ram: number, pages: number, list: number, count: number, out: number, full: number, zeros: number): number {
  const u8 = heap.u8;
  const u32 = heap.u32;
  const l = list >>> 2;
  let k = 0;
  let z = 0;
  let i = 0;
  for (; i + GROUP <= count; i += GROUP) {
    const group = u32.slice(l + i, l + i + GROUP);
    if (group.some((index) => index >= pages)) return BAD_INDEX;
    const slots = out + k * PAGE_SIZE;
    let nonzero = 0;
    group.forEach((index, j) => {
      const page = ram + index * PAGE_SIZE;
      u8.copyWithin(slots + j * PAGE_SIZE, page, page + PAGE_SIZE);
      if (!pageIsZero(heap, slots + j * PAGE_SIZE)) nonzero |= 1 << j;
    });
    const first = k;
    group.forEach((index, j) => {
      if ((nonzero & (1 << j)) === 0) {
        u32[(zeros >>> 2) + z++] = index;
        return;
      }
      if (k !== first + j) u8.copyWithin(out + k * PAGE_SIZE, slots + j * PAGE_SIZE, slots + (j + 1) * PAGE_SIZE);
      u32[(full >>> 2) + k++] = index;
    });
  }
  for (; i < count; i++) {
    const index = u32[l + i];
    if (index >= pages) return BAD_INDEX;
    const slot = out + k * PAGE_SIZE;
    u8.copyWithin(slot, ram + index * PAGE_SIZE, ram + (index + 1) * PAGE_SIZE);
    if (!pageIsZero(heap, slot)) u32[(full >>> 2) + k++] = index;
    else u32[(zeros >>> 2) + z++] = index;
  }
  return k;
}
