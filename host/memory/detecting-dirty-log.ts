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
 */

import { kernelsFor, type KernelFlavor, type Kernels } from "../wasm/kernels.ts";
import { DirtyLogBase } from "./dirty-log.ts";
import { PAGE_SIZE, type GuestMemory } from "./guest-memory.ts";
import { RamAccess } from "./ram-access.ts";

/** Options of a {@link DetectingDirtyLog}. */
export interface DetectingDirtyLogOptions {
  /** Which kernels to run; default: see {@link defaultFlavor}. */
  kernels?: KernelFlavor;
}

/** A dirty log that detects changes against a shadow copy. */
export class DetectingDirtyLog extends DirtyLogBase {
  readonly pageCount: number;
  readonly #guest: GuestMemory;
  readonly #access: RamAccess;
  readonly #kernels: Kernels;
  readonly #shadow: number;
  readonly #out: number;

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
  }

  /** Which kernels this log runs. */
  get flavor(): KernelFlavor {
    return this.#kernels.flavor;
  }

  /** True when the RAM is scanned in place, false when it is staged through a window. */
  get inPlace(): boolean {
    return this.#access.inPlace;
  }

  protected onArm(): void {
    // Nothing to set up: the full first epoch is what fills the shadow.
  }

  protected take(full: boolean): Uint32Array {
    return full ? this.#takeAll() : this.#takeChanged();
  }

  /**
   * The guest's RAM as of the last collect (a view; valid until the next collect). Pages
   * never collected read as zero.
   */
  shadow(): Uint8Array {
    const { heap } = this.#access;
    return heap.u8.subarray(this.#shadow, this.#shadow + this.#guest.size);
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
