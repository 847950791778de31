/**
 * A dirty log that the emulator marks on every write to guest RAM (as KVM's dirty bitmap or
 * QEMU's migration bitmap): one bit per page, in a heap of the log's own.
 */

import { ErrorCode, TandemError } from "../errors.ts";
import { Heap } from "../wasm/heap.ts";
import { SCAN_SLACK, kernelsFor, type KernelFlavor, type Kernels } from "../wasm/kernels.ts";
import { DirtyLogBase } from "./dirty-log.ts";
import { MAX_GUEST_BYTES, PAGE_SIZE } from "./guest-memory.ts";

/** Options of a {@link BitmapDirtyLog}. */
export interface BitmapDirtyLogOptions {
  /** Which kernels to run; default: see {@link defaultFlavor}. */
  kernels?: KernelFlavor;
}

/** A dirty log marked by the emulator through {@link markRange}. */
export class BitmapDirtyLog extends DirtyLogBase {
  readonly pageCount: number;
  readonly #kernels: Kernels;
  readonly #heap: Heap;
  readonly #map: number;
  readonly #out: number;
  readonly #bytes: number;

  /** A log for a guest of `guest.pageCount` pages (a {@link GuestMemory} will do). */
  constructor(guest: { readonly pageCount: number }, options: BitmapDirtyLogOptions = {}) {
    super();
    const pages = guest.pageCount;
    if (!Number.isInteger(pages) || pages <= 0 || pages * PAGE_SIZE > MAX_GUEST_BYTES) {
      throw new TandemError(ErrorCode.BadArgument, `page count ${pages}: expected 1 to ${MAX_GUEST_BYTES / PAGE_SIZE}`);
    }
    this.pageCount = pages;
    this.#bytes = pages * PAGE_SIZE;
    const mapBytes = Math.ceil(pages / 64) * 8;
    const outBytes = (pages + SCAN_SLACK) * 4;
    this.#heap = Heap.create(mapBytes + outBytes + 256);
    this.#map = this.#heap.alloc(mapBytes);
    this.#out = this.#heap.alloc(outBytes);
    this.#kernels = kernelsFor(this.#heap, options.kernels);
  }

  /** Which kernels this log runs. */
  get flavor(): KernelFlavor {
    return this.#kernels.flavor;
  }

  /**
   * Records a write of `len` bytes at guest address `addr`: every page the range touches is
   * dirty. Zero-length writes mark nothing. A range outside the guest is an error (E_OUT_OF_RANGE),
   * never silently clipped, since a lost mark is a lost page on the standby.
   */
  markRange(addr: number, len: number): void {
    if (!(addr >= 0 && len >= 0 && addr + len <= this.#bytes) || !Number.isInteger(addr) || !Number.isInteger(len)) {
      throw new TandemError(ErrorCode.OutOfRange, `write of ${len} bytes at ${addr} is outside the guest's ${this.#bytes} bytes`);
    }
    if (len === 0) return;
    // Exact for all addresses below 2^53; shifts would wrap above 2 GiB.
    this.#kernels.bitmapMark(this.#map, Math.floor(addr / PAGE_SIZE), Math.ceil((addr + len) / PAGE_SIZE));
  }

  /** Pages marked in the current epoch (a full epoch counts every page). */
  count(): number {
    return this.#kernels.bitmapCount(this.#map, this.pageCount);
  }

  protected onArm(): void {
    // Every bit set: the first epoch reports every page, and marks made meanwhile are kept.
    this.#kernels.bitmapMark(this.#map, 0, this.pageCount);
  }

  protected take(): Uint32Array {
    const n = this.#kernels.bitmapScanClear(this.#map, this.pageCount, this.#out);
    return this.#heap.u32.slice(this.#out >>> 2, (this.#out >>> 2) + n);
  }
}
