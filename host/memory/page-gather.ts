/**
 * Gathering a list of guest pages into contiguous runs, with the all-zero ones picked out in the
 * same pass: what a checkpoint capture does while the guest is paused. One kernel call per
 * window of pages replaces a view, a copy call and a set lookup per page.
 */

import { ErrorCode, TandemError } from "../errors.ts";
import type { Heap } from "../wasm/heap.ts";
import { BAD_INDEX, kernelsFor, type KernelFlavor, type Kernels } from "../wasm/kernels.ts";
import { GuestMemory, PAGE_SIZE } from "./guest-memory.ts";
import { RamAccess, STAGING_PAGES } from "./ram-access.ts";

/**
 * Pages gathered per kernel call: 1 MiB, which stays in the cache until it is copied out. At
 * most {@link STAGING_PAGES}, so a staged guest's window holds a whole call's pages.
 */
export const GATHER_PAGES = STAGING_PAGES;

/** Pages that kernels reach in place: `pageCount` pages from byte `ptr` of `heap` (a shadow copy). */
export interface PagesInHeap {
  readonly heap: Heap;
  readonly ptr: number;
  readonly pageCount: number;
}

/** Options of a {@link PageGatherer}. */
export interface PageGathererOptions {
  /** Which kernels to run; default: see {@link defaultFlavor}. */
  kernels?: KernelFlavor;
}

/**
 * Called once per window of listed pages, in list order: the pages that are not all zero, their
 * bytes back to back (`bytes`, `full.length` pages), and the zero ones. The three are views of
 * the gatherer's buffers, valid only during the call; `visit` may rearrange them.
 */
export type GatheredPages = (full: Uint32Array, bytes: Uint8Array, zeros: Uint32Array) => void;

/** Gathers listed pages of a guest (or of a copy of it in a heap). */
export class PageGatherer {
  readonly #pageCount: number;
  readonly #heap: Heap;
  readonly #kernels: Kernels;
  /** Set for a guest whose pages must be reached through {@link RamAccess} (maybe staged). */
  readonly #access: RamAccess | undefined;
  /** Where page 0 of the source sits in {@link #heap}, when it is there in place. */
  readonly #ptr: number;
  readonly #list: number;
  readonly #out: number;
  readonly #full: number;
  readonly #zeros: number;

  /**
   * A gatherer over `source`: a guest's RAM (scanned in place in its WebAssembly.Memory, or
   * staged from an ArrayBuffer), or pages already in a heap. Its buffers (about 1 MiB) are
   * allocated once, in that heap.
   */
  constructor(source: GuestMemory | PagesInHeap, options: PageGathererOptions = {}) {
    const buffers = GATHER_PAGES * PAGE_SIZE + 3 * GATHER_PAGES * 4 + 4 * 64;
    if (source instanceof GuestMemory) {
      this.#access = new RamAccess(source, buffers);
      this.#heap = this.#access.heap;
      this.#ptr = source.offset;
      this.#pageCount = source.pageCount;
    } else {
      this.#heap = source.heap;
      this.#ptr = source.ptr;
      this.#pageCount = source.pageCount;
    }
    this.#out = this.#heap.alloc(GATHER_PAGES * PAGE_SIZE, PAGE_SIZE);
    this.#list = this.#heap.alloc(GATHER_PAGES * 4);
    this.#full = this.#heap.alloc(GATHER_PAGES * 4);
    this.#zeros = this.#heap.alloc(GATHER_PAGES * 4);
    this.#kernels = kernelsFor(this.#heap, options.kernels);
  }

  /** Which kernels this gatherer runs. */
  get flavor(): KernelFlavor {
    return this.#kernels.flavor;
  }

  /**
   * Gathers `pages` (page indices), a window at a time, calling `visit` for each window. An
   * index that is not a page of the source is an error (E_OUT_OF_RANGE), raised before `visit`
   * sees anything of that window.
   */
  gather(pages: Uint32Array, visit: GatheredPages): void {
    const pageCount = this.#pageCount;
    for (let start = 0; start < pages.length; start += GATHER_PAGES) {
      const chunk = pages.subarray(start, start + GATHER_PAGES);
      let ptr = this.#ptr;
      let local = chunk;
      let bound = pageCount;
      if (this.#access && !this.#access.inPlace) {
        ({ ptr, local } = this.#access.reach(chunk)); // window slots 0..n-1, range-checked
        bound = chunk.length;
      }
      const heap = this.#heap;
      heap.u32.set(local, this.#list >>> 2);
      const n = this.#kernels.pagesGather(ptr, bound, this.#list, chunk.length, this.#out, this.#full, this.#zeros);
      if (n === BAD_INDEX) {
        const bad = chunk.find((p) => p >= pageCount);
        throw new TandemError(ErrorCode.OutOfRange, `page ${bad} is not in a source of ${pageCount} pages`);
      }
      const words = heap.u32;
      let full = words.subarray(this.#full >>> 2, (this.#full >>> 2) + n);
      let zeros = words.subarray(this.#zeros >>> 2, (this.#zeros >>> 2) + chunk.length - n);
      if (local !== chunk) {
        // Staged: the kernel saw window slots; name the guest's pages instead.
        full = full.map((slot) => chunk[slot]);
        zeros = zeros.map((slot) => chunk[slot]);
      }
      visit(full, heap.u8.subarray(this.#out, this.#out + n * PAGE_SIZE), zeros);
    }
  }
}
