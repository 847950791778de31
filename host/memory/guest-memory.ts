/**
 * A guest's RAM as a region of a WebAssembly.Memory (an emulator's own, scanned in place) or
 * of any ArrayBuffer. Addresses are guest-physical, relative to the region's start.
 */

import { ErrorCode, TandemError } from "../errors.ts";
import { Heap, type HeapOptions } from "../wasm/heap.ts";

/** Bytes in a guest page: the unit of every dirty log. */
export const PAGE_SIZE = 4096;
/** log2 of {@link PAGE_SIZE}. */
export const PAGE_SHIFT = 12;
/** Largest region: a wasm32 memory's whole address space, so page indices fit in u32. */
export const MAX_GUEST_BYTES = 2 ** 32;

/** Where the region lies in its backing store. */
export interface GuestRegion {
  /** Byte offset of guest address 0. Default 0. */
  offset?: number;
  /** Bytes of RAM, a multiple of 4096. Default: from `offset` to the end of the backing. */
  size?: number;
  /**
   * For a WebAssembly.Memory: where tandem may put the buffers it keeps beside the RAM
   * (shadow copies, page lists). Default: pages it adds to the end of the memory.
   */
  scratch?: HeapOptions;
}

/** A guest RAM region. */
export class GuestMemory {
  /** The store the RAM lives in. */
  readonly backing: WebAssembly.Memory | ArrayBuffer | SharedArrayBuffer;
  /** Byte offset of guest address 0 in the backing. */
  readonly offset: number;
  /** Bytes of RAM. */
  readonly size: number;
  /** Pages of RAM (size / 4096). */
  readonly pageCount: number;
  readonly #scratch: HeapOptions | undefined;
  #heap: Heap | undefined;
  #view: Uint8Array;

  constructor(backing: WebAssembly.Memory | ArrayBuffer | SharedArrayBuffer, region: GuestRegion = {}) {
    const length = backing instanceof WebAssembly.Memory ? backing.buffer.byteLength : backing.byteLength;
    const offset = region.offset ?? 0;
    const size = region.size ?? length - offset;
    if (!Number.isInteger(offset) || offset < 0 || !Number.isInteger(size) || size <= 0) {
      throw new TandemError(ErrorCode.BadRegion, `guest region offset ${offset} size ${size}: both must be integers, size above 0`);
    }
    if (size % PAGE_SIZE !== 0 || size > MAX_GUEST_BYTES) {
      throw new TandemError(ErrorCode.BadRegion, `guest size ${size} must be a multiple of ${PAGE_SIZE} and at most 4 GiB`);
    }
    if (offset + size > length) {
      throw new TandemError(ErrorCode.BadRegion, `guest region ${offset}+${size} ends past its backing (${length} bytes)`);
    }
    this.backing = backing;
    this.offset = offset;
    this.size = size;
    this.pageCount = size / PAGE_SIZE;
    this.#scratch = region.scratch;
    this.#view = this.#makeView();
  }

  /** The backing memory when kernels can scan the RAM in place, else undefined. */
  get wasmMemory(): WebAssembly.Memory | undefined {
    return this.backing instanceof WebAssembly.Memory ? this.backing : undefined;
  }

  /**
   * The heap over the backing memory that in-place kernels use, with tandem's scratch
   * arena in it (made on first use). Undefined for an ArrayBuffer backing.
   */
  get heap(): Heap | undefined {
    const memory = this.wasmMemory;
    if (memory && !this.#heap) this.#heap = new Heap(memory, this.#scratch);
    return this.#heap;
  }

  /** The RAM's bytes. A fresh view is made if the memory grew since the last call. */
  bytes(): Uint8Array {
    const buffer = this.backing instanceof WebAssembly.Memory ? this.backing.buffer : this.backing;
    if (this.#view.buffer !== buffer) this.#view = this.#makeView();
    return this.#view;
  }

  /** The bytes of page `index` (a view, not a copy). */
  page(index: number): Uint8Array {
    if (!Number.isInteger(index) || index < 0 || index >= this.pageCount) {
      throw new TandemError(ErrorCode.OutOfRange, `page ${index} is not in a guest of ${this.pageCount} pages`);
    }
    return this.bytes().subarray(index * PAGE_SIZE, (index + 1) * PAGE_SIZE);
  }

  #makeView(): Uint8Array {
    const buffer = this.backing instanceof WebAssembly.Memory ? this.backing.buffer : this.backing;
    return new Uint8Array(buffer, this.offset, this.size);
  }
}
