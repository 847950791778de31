/**
 * A dirty log for emulators that cannot mark their writes (v86 is one): it finds changed
 * pages by comparing the RAM against a shadow copy of the last collect, and brings the shadow
 * up to date for exactly the pages it reports, in the same pass.
 *
 * The shadow is therefore a consistent image of the guest as of the last collect. A caller
 * that resumes the guest before sending the pages (speculative execution) reads them from
 * {@link DetectingDirtyLog.shadow}, not from live RAM.
 *
 * Why compare and not hash: compare is exact, and `npm run bench -- memory` measures it at the
 * speed of native memcmp; docs/dirty-logs.md weighs the alternative.
 *
 * The compare reads all of RAM twice and is bounded by memory bandwidth; it is the whole of a
 * checkpoint pause. When the RAM is a shared WebAssembly.Memory, a helper thread
 * (compare-helper.ts) compares the upper half while this thread compares the lower half: the
 * guest is paused, so the second core is otherwise idle.
 */

import { cpus } from "node:os";
import { ErrorCode, TandemError } from "../errors.ts";
import { kernelsFor, type KernelFlavor, type Kernels } from "../wasm/kernels.ts";
import { isSharedMemory, type WasmFlavor } from "../wasm/loader.ts";
import { compareHelper, type CompareHelper } from "./compare-helper.ts";
import { DirtyLogBase } from "./dirty-log.ts";
import { PAGE_SIZE, type GuestMemory } from "./guest-memory.ts";
import type { PagesInHeap } from "./page-gather.ts";
import { RamAccess } from "./ram-access.ts";

/**
 * Smallest guest (16 MiB) whose compare is split with a helper thread. Measured on 2 cores with
 * the helper idle between collects: waking it costs ~0.1 ms, so at 64-128 pages splitting is
 * slower, at 512-2048 it saves 0.1-0.8 ms, at 4096 1-1.7 ms. Below this no pause would notice.
 */
export const PARALLEL_MIN_PAGES = 4096;

/** Options of a {@link DetectingDirtyLog}. */
export interface DetectingDirtyLogOptions {
  /** Which kernels to run; default: see {@link defaultFlavor}. */
  kernels?: KernelFlavor;
  /**
   * Threads that compare. 2 (the default) has a helper thread take the upper half of the pages
   * when the RAM is in place in a shared WebAssembly.Memory, the kernels are Wasm, the machine
   * has more than one CPU and the guest has at least {@link PARALLEL_MIN_PAGES} pages; 1 never.
   */
  threads?: 1 | 2;
}

/** A dirty log that detects changes against a shadow copy. */
export class DetectingDirtyLog extends DirtyLogBase {
  readonly pageCount: number;
  readonly #guest: GuestMemory;
  readonly #access: RamAccess;
  readonly #kernels: Kernels;
  readonly #shadow: number;
  readonly #out: number;
  /** The helper to split compares with; undefined when splitting does not pay or a helper failed. */
  #help: { memory: WebAssembly.Memory; flavor: WasmFlavor } | undefined;
  #split = false;

  /**
   * A log over `guest`. Its shadow (guest-sized) and page list live beside the RAM when the
   * RAM is a WebAssembly.Memory (see {@link GuestRegion.scratch}), else in a heap of its own.
   */
  constructor(guest: GuestMemory, options: DetectingDirtyLogOptions = {}) {
    super();
    this.#guest = guest;
    this.pageCount = guest.pageCount;
    this.#access = new RamAccess(guest, guest.size + guest.pageCount * 4 + 2 * PAGE_SIZE);
    this.#shadow = this.#access.heap.alloc(guest.size, PAGE_SIZE);
    this.#out = this.#access.heap.alloc(guest.pageCount * 4);
    this.#kernels = kernelsFor(this.#access.heap, options.kernels);
    const threads = options.threads ?? 2;
    if (threads !== 1 && threads !== 2) {
      throw new TandemError(ErrorCode.BadArgument, `threads: ${String(threads)}; expected 1 or 2`);
    }
    const memory = this.#access.heap.memory;
    const flavor = this.#kernels.flavor;
    if (threads === 2 && this.#access.inPlace && isSharedMemory(memory) && flavor !== "ts" &&
        this.pageCount >= PARALLEL_MIN_PAGES && cpus().length > 1) {
      this.#help = { memory, flavor };
    }
  }

  /** Which kernels this log runs. */
  get flavor(): KernelFlavor {
    return this.#kernels.flavor;
  }

  /** True when the RAM is scanned in place, false when it is staged through a window. */
  get inPlace(): boolean {
    return this.#access.inPlace;
  }

  /**
   * True when the last collect split its compare with a helper thread (see
   * {@link DetectingDirtyLogOptions.threads}); false after a full collect, which only copies.
   */
  get parallel(): boolean {
    return this.#split;
  }

  protected onArm(): void {
    // The full first epoch is what fills the shadow. Starting the helper now lets its thread
    // boot while that epoch is copied, not in the first compare's pause.
    this.#helper();
  }

  protected take(full: boolean): Uint32Array {
    this.#split = false;
    if (full) return this.#takeAll();
    const helper = this.#helper();
    return helper ? this.#takeSplit(helper) : this.#takeChanged();
  }

  /**
   * The guest's RAM as of the last collect (a view; valid until the next collect). Pages
   * never collected read as zero.
   */
  shadow(): Uint8Array {
    const { heap } = this.#access;
    return heap.u8.subarray(this.#shadow, this.#shadow + this.#guest.size);
  }

  /** Where {@link shadow} lies in its heap, for kernels that read it in place (a page gatherer). */
  shadowPages(): PagesInHeap {
    return { heap: this.#access.heap, ptr: this.#shadow, pageCount: this.pageCount };
  }

  #takeAll(): Uint32Array {
    const { heap } = this.#access;
    if (this.#access.inPlace) {
      heap.u8.copyWithin(this.#shadow, this.#guest.offset, this.#guest.offset + this.#guest.size);
    } else {
      heap.u8.set(this.#guest.bytes(), this.#shadow);
    }
    const all = new Uint32Array(this.pageCount);
    for (let i = 0; i < all.length; i++) all[i] = i;
    return all;
  }

  /** The helper to use for this collect, if any. */
  #helper(): CompareHelper | undefined {
    if (!this.#help) return undefined;
    let helper: CompareHelper | undefined;
    try {
      helper = compareHelper(this.#help.memory, this.#help.flavor);
    } catch {
      // The runtime would not start a thread (out of threads or memory).
    }
    if (helper?.alive) return helper;
    // No thread, or one that died between collects with no job of ours: the shadow is sound,
    // so compare alone from now on, as on one core.
    this.#help = undefined;
    return undefined;
  }

  /** As {@link #takeChanged}, the helper comparing the upper half at the same time. */
  #takeSplit(helper: CompareHelper): Uint32Array {
    const ram = this.#guest.offset;
    // Half and half: with the guest paused both threads stream memory at the same rate.
    const lower = this.pageCount >>> 1;
    helper.start(ram + lower * PAGE_SIZE, this.#shadow + lower * PAGE_SIZE, this.pageCount - lower, this.#out + lower * 4);
    let low: number;
    let high: number;
    try {
      low = this.#kernels.pagesCompareCopy(ram, this.#shadow, lower, this.#out);
    } finally {
      // Even if the lower half threw: never return while the helper may still write.
      high = this.#finish(helper);
    }
    // The helper's list sits at out + lower, relative to its first page.
    const words = this.#access.heap.u32;
    const list = this.#out >>> 2;
    const pages = new Uint32Array(low + high);
    pages.set(words.subarray(list, list + low));
    for (let i = 0, at = list + lower; i < high; i++) pages[low + i] = words[at + i] + lower;
    this.#split = true;
    return pages;
  }

  #finish(helper: CompareHelper): number {
    try {
      return helper.finish();
    } catch (error) {
      // The upper half may be partly copied into the shadow, so the shadow can no longer show
      // what changed there: re-arm (the next collect reports and copies every page), and never
      // redo that half here while the helper might still be writing it.
      this.#help = undefined;
      this.arm();
      throw error;
    }
  }

  #takeChanged(): Uint32Array {
    const { heap } = this.#access;
    let n = 0;
    this.#access.forEachRun((ptr, first, count) => {
      const listed = this.#out + n * 4;
      const found = this.#kernels.pagesCompareCopy(ptr, this.#shadow + first * PAGE_SIZE, count, listed);
      if (first !== 0) {
        const words = heap.u32;
        for (let i = listed >>> 2, end = i + found; i < end; i++) words[i] += first;
      }
      n += found;
    });
    return heap.u32.slice(this.#out >>> 2, (this.#out >>> 2) + n);
  }
}
