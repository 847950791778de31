/**
 * Zero-page detection over a list of pages: the checkpoint stream sends an all-zero page as a
 * flag instead of 4096 bytes.
 */

import { ErrorCode, TandemError } from "../errors.ts";
import { BAD_INDEX, kernelsFor, type KernelFlavor, type Kernels } from "../wasm/kernels.ts";
import type { GuestMemory } from "./guest-memory.ts";
import { RamAccess, STAGING_PAGES } from "./ram-access.ts";

/** Options of a {@link ZeroPageFinder}. */
export interface ZeroPageFinderOptions {
  /** Which kernels to run; default: see {@link defaultFlavor}. */
  kernels?: KernelFlavor;
}

/** Finds which of a list of guest pages are all zero. */
export class ZeroPageFinder {
  readonly #guest: GuestMemory;
  readonly #access: RamAccess;
  readonly #kernels: Kernels;
  readonly #list: number;
  readonly #out: number;
  readonly #capacity: number;

  constructor(guest: GuestMemory, options: ZeroPageFinderOptions = {}) {
    this.#guest = guest;
    this.#access = new RamAccess(guest, 2 * STAGING_PAGES * 4);
    // In place a call may list every page; staged, one window's worth at a time.
    this.#capacity = this.#access.inPlace ? guest.pageCount : STAGING_PAGES;
    this.#list = this.#access.heap.alloc(this.#capacity * 4);
    this.#out = this.#access.heap.alloc(this.#capacity * 4);
    this.#kernels = kernelsFor(this.#access.heap, options.kernels);
  }

  /** Which kernels this finder runs. */
  get flavor(): KernelFlavor {
    return this.#kernels.flavor;
  }

  /**
   * The all-zero pages among `pages` (guest page indices), in list order. An index that is not
   * a page of the guest is an error (E_OUT_OF_RANGE).
   */
  find(pages: Uint32Array): Uint32Array {
    const { pageCount } = this.#guest;
    const found: number[] = [];
    for (let start = 0; start < pages.length; start += this.#capacity) {
      const chunk = pages.subarray(start, start + this.#capacity);
      const { ptr, local } = this.#access.reach(chunk);
      const { heap } = this.#access;
      heap.u32.set(local, this.#list >>> 2);
      const bound = this.#access.inPlace ? pageCount : chunk.length;
      const n = this.#kernels.pagesZero(ptr, bound, this.#list, chunk.length, this.#out);
      if (n === BAD_INDEX) {
        const bad = chunk.find((p) => p >= pageCount);
        throw new TandemError(ErrorCode.OutOfRange, `page ${bad} is not in a guest of ${pageCount} pages`);
      }
      const words = heap.u32;
      const first = this.#out >>> 2;
      // Results are in the numbering `local` used; map slots back to guest pages.
      for (let i = first; i < first + n; i++) found.push(this.#access.inPlace ? words[i] : chunk[words[i]]);
    }
    return Uint32Array.from(found);
  }
}
