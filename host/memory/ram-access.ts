/**
 * How kernels reach a guest's pages. RAM in a WebAssembly.Memory is scanned in place: the
 * kernels import that very memory. RAM in a plain ArrayBuffer cannot be imported, so it is
 * staged: copied a window at a time into a heap of tandem's own (memcpy speed, bounded
 * memory), and the kernels scan the window.
 */

import { ErrorCode, TandemError } from "../errors.ts";
import { Heap } from "../wasm/heap.ts";
import { PAGE_SIZE, type GuestMemory } from "./guest-memory.ts";

/** Pages staged per window: 1 MiB, small enough to stay in cache between copy and scan. */
export const STAGING_PAGES = 256;

/** A heap that holds the guest's pages (in place) or a staging window for them. */
export class RamAccess {
  /** The guest. */
  readonly guest: GuestMemory;
  /** The heap kernels run over; tandem's buffers for this guest are allocated here. */
  readonly heap: Heap;
  /** True when the RAM itself is in {@link heap}; false when it is staged. */
  readonly inPlace: boolean;
  readonly #window: number;

  /**
   * `extraBytes`: what the caller will allocate in {@link heap} besides the window, so that a
   * heap of tandem's own (staged case) is sized once and never grows.
   */
  constructor(guest: GuestMemory, extraBytes = 0) {
    this.guest = guest;
    const heap = guest.heap;
    this.inPlace = heap !== undefined;
    this.heap = heap ?? Heap.create(extraBytes + STAGING_PAGES * PAGE_SIZE + PAGE_SIZE);
    this.#window = this.inPlace ? 0 : this.heap.alloc(STAGING_PAGES * PAGE_SIZE, PAGE_SIZE);
  }

  /**
   * Calls `visit(ptr, first, count)` for consecutive runs of pages covering the whole guest,
   * in order; `ptr` is where page `first` sits in {@link heap} during the call.
   */
  forEachRun(visit: (ptr: number, first: number, count: number) => void): void {
    const { pageCount } = this.guest;
    if (this.inPlace) {
      visit(this.guest.offset, 0, pageCount);
      return;
    }
    for (let first = 0; first < pageCount; first += STAGING_PAGES) {
      const count = Math.min(STAGING_PAGES, pageCount - first);
      this.heap.u8.set(this.guest.bytes().subarray(first * PAGE_SIZE, (first + count) * PAGE_SIZE), this.#window);
      visit(this.#window, first, count);
    }
  }

  /**
   * Makes the listed pages (at most {@link STAGING_PAGES} when staged) reachable by kernels.
   * Returns `ptr`, where page 0 of the returned numbering sits, and `local`, the list in that
   * numbering: in place, the guest's page indices themselves; staged, window slots 0..n-1.
   * A listed page that is not in the guest is an error (E_OUT_OF_RANGE); in place, the
   * kernels check that themselves.
   */
  reach(list: Uint32Array): { ptr: number; local: Uint32Array } {
    if (this.inPlace) return { ptr: this.guest.offset, local: list };
    if (list.length > STAGING_PAGES) {
      throw new TandemError(ErrorCode.BadArgument, `${list.length} pages do not fit the ${STAGING_PAGES}-page staging window`);
    }
    const ram = this.guest.bytes();
    const u8 = this.heap.u8;
    const local = new Uint32Array(list.length);
    for (let slot = 0; slot < list.length; slot++) {
      const page = list[slot];
      if (page >= this.guest.pageCount) {
        throw new TandemError(ErrorCode.OutOfRange, `page ${page} is not in a guest of ${this.guest.pageCount} pages`);
      }
      u8.set(ram.subarray(page * PAGE_SIZE, (page + 1) * PAGE_SIZE), this.#window + slot * PAGE_SIZE);
      local[slot] = slot;
    }
    return { ptr: this.#window, local };
  }
}
