// Change detection against a shadow copy, for emulators that cannot mark their writes.
//
// `ram` and `shadow` each hold `pages` consecutive 4096-byte pages in this module's memory.
// The indices of pages that differ are written ascending as u32 at `out` (room for `pages`
// entries); the count is returned.

import { PAGE_SHIFT, PAGE_SIZE, pageEqual } from "./page";

/** Lists the pages of `ram` that differ from `shadow`. Neither side is modified. */
export function pages_compare(ram: usize, shadow: usize, pages: u32, out: usize): u32 {
  return compare(ram, shadow, pages, out, false);
}

/** As pages_compare, and copies each changed page into `shadow` (fused: one pass). */
export function pages_compare_copy(ram: usize, shadow: usize, pages: u32, out: usize): u32 {
  return compare(ram, shadow, pages, out, true);
}

// @ts-ignore: decorator
@inline function compare(ram: usize, shadow: usize, pages: u32, out: usize, copy: bool): u32 {
  let n: u32 = 0;
  for (let i: u32 = 0; i < pages; i++) {
    const offset = <usize>i << PAGE_SHIFT;
    if (pageEqual(ram + offset, shadow + offset)) continue;
    if (copy) memory.copy(shadow + offset, ram + offset, PAGE_SIZE);
    store<u32>(out + (<usize>n << 2), i);
    n++;
  }
  return n;
}
