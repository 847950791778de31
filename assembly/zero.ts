// Zero-page detection over a list of pages (the checkpoint stream sends zero pages as a flag).

import { PAGE_SHIFT, pageIsZero } from "./page";

/** Returned when the list names a page at or past `pages`; nothing is then trusted. */
// @ts-ignore: decorator
@inline const BAD_INDEX: u32 = u32.MAX_VALUE;

/**
 * For each u32 page index in `list` (`count` entries), tests the page at
 * ram + index * 4096; writes the indices of all-zero pages, in list order, at `out`.
 * Returns how many, or 0xFFFFFFFF if an index is not below `pages`.
 */
export function pages_zero(ram: usize, pages: u32, list: usize, count: u32, out: usize): u32 {
  let n: u32 = 0;
  for (let i: u32 = 0; i < count; i++) {
    const index = load<u32>(list + (<usize>i << 2));
    if (index >= pages) return BAD_INDEX;
    if (!pageIsZero(ram + (<usize>index << PAGE_SHIFT))) continue;
    store<u32>(out + (<usize>n << 2), index);
    n++;
  }
  return n;
}
