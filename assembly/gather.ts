// Gathering listed pages into one buffer, zero pages flagged in the same pass: the checkpoint
// capture (host/memory/page-gather.ts). Each page is tested, then copied while it is still in
// the cache, so RAM is read once: a page with data usually fails the zero test in its first
// bytes, and an all-zero page is read whole but never copied.

import { PAGE_SHIFT, PAGE_SIZE, pageIsZero } from "./page";

/** Returned when the list names a page at or past `pages`; nothing written is then trusted. */
// @ts-ignore: decorator
@inline const BAD_INDEX: u32 = u32.MAX_VALUE;

/**
 * For each u32 page index in `list` (`count` entries) of the pages at `ram`: an all-zero page's
 * index goes to `zeros`; any other page is copied to `out` + k * 4096 and its index goes to
 * `full` + k * 4, k counting up from 0. Both index lists keep list order. Returns k (the zero
 * pages are the other count - k), or 0xFFFFFFFF if an index is not below `pages`.
 */
export function pages_gather(ram: usize, pages: u32, list: usize, count: u32, out: usize, full: usize, zeros: usize): u32 {
  let k: u32 = 0;
  let z: u32 = 0;
  for (let i: u32 = 0; i < count; i++) {
    const index = load<u32>(list + (<usize>i << 2));
    if (index >= pages) return BAD_INDEX;
    const page = ram + (<usize>index << PAGE_SHIFT);
    if (pageIsZero(page)) {
      store<u32>(zeros + (<usize>z << 2), index);
      z++;
      continue;
    }
    memory.copy(out + (<usize>k << PAGE_SHIFT), page, PAGE_SIZE);
    store<u32>(full + (<usize>k << 2), index);
    k++;
  }
  return k;
}
