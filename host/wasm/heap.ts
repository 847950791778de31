/**
 * A linear memory that kernels work on, with views that survive `memory.grow` and an arena
 * for tandem's own buffers (bitmaps, shadows, page lists).
 *
 * The memory may be tandem's or an emulator's. In an emulator's memory tandem never touches
 * bytes it did not allocate: the arena takes space only from a region the caller reserved or
 * from pages it adds with `memory.grow` (whose old size is exactly where its new pages start,
 * whoever else grows the memory). Growing detaches every view over the old buffer; tandem's
 * views re-create themselves, and an emulator that caches typed arrays must reserve a region
 * instead (v86 does not cache: its views are re-made on each access).
 */

import { ErrorCode, TandemError } from "../errors.ts";

/** Bytes in one Wasm page, the unit of `memory.grow`. */
export const WASM_PAGE_SIZE = 65536;
/** Default alignment of arena blocks: a cache line, which also suits v128 and u64 access. */
const DEFAULT_ALIGN = 64;

/** Where an arena may take space in a memory it does not own. */
export interface HeapOptions {
  /** A byte range of the memory reserved for tandem; used before any growth. */
  reserved?: { offset: number; size: number };
  /** Whether the arena may grow the memory when the reserved range is used up. Default true. */
  grow?: boolean;
}

/** A memory with detach-safe views and a bump arena. */
export class Heap {
  /** The memory kernels import. */
  readonly memory: WebAssembly.Memory;
  readonly #mayGrow: boolean;
  #u8: Uint8Array;
  #u32: Uint32Array;
  #cursor: number;
  #limit: number;

  constructor(memory: WebAssembly.Memory, options: HeapOptions = {}) {
    this.memory = memory;
    this.#mayGrow = options.grow ?? true;
    const { offset = 0, size = 0 } = options.reserved ?? {};
    if (!Number.isInteger(offset) || !Number.isInteger(size) || offset < 0 || size < 0 ||
        offset + size > memory.buffer.byteLength) {
      throw new TandemError(ErrorCode.BadRegion, `reserved range ${offset}+${size} is not inside the memory`);
    }
    this.#cursor = offset;
    this.#limit = offset + size;
    this.#u8 = new Uint8Array(memory.buffer);
    this.#u32 = new Uint32Array(memory.buffer);
  }

  /** A heap over a new memory of its own, sized for `bytes` up front so it rarely grows. */
  static create(bytes = 0): Heap {
    const initial = Math.ceil(bytes / WASM_PAGE_SIZE);
    return new Heap(new WebAssembly.Memory({ initial }), { reserved: { offset: 0, size: initial * WASM_PAGE_SIZE } });
  }

  /** Bytes of the whole memory. Re-made after a grow, so never a detached view. */
  get u8(): Uint8Array {
    if (this.#u8.buffer !== this.memory.buffer) this.#refresh();
    return this.#u8;
  }

  /** The whole memory as u32 words (index = byte offset / 4). Detach-safe like {@link u8}. */
  get u32(): Uint32Array {
    if (this.#u32.buffer !== this.memory.buffer) this.#refresh();
    return this.#u32;
  }

  /** Reserves `bytes` zeroed bytes aligned to `align` (a power of two); returns the offset. */
  alloc(bytes: number, align = DEFAULT_ALIGN): number {
    if (!Number.isInteger(bytes) || bytes < 0 || !Number.isInteger(align) || align <= 0 || (align & (align - 1)) !== 0) {
      throw new TandemError(ErrorCode.BadArgument, `cannot allocate ${bytes} bytes aligned to ${align}`);
    }
    let start = alignUp(this.#cursor, align);
    if (start + bytes > this.#limit) {
      start = this.#grow(bytes, align);
    }
    this.#cursor = start + bytes;
    // Reserved ranges may hold old data; grown pages are zero already, but one rule is simpler.
    this.u8.fill(0, start, start + bytes);
    return start;
  }

  #grow(bytes: number, align: number): number {
    if (!this.#mayGrow) {
      throw new TandemError(ErrorCode.HeapFull, `the reserved range has no room for ${bytes} bytes and growing the memory is not allowed`);
    }
    const pages = Math.ceil((bytes + align) / WASM_PAGE_SIZE);
    let oldPages: number;
    try {
      oldPages = this.memory.grow(pages);
    } catch (cause) {
      throw new TandemError(ErrorCode.HeapFull, `cannot grow the memory by ${pages} Wasm pages (${(cause as Error).message}); the memory's maximum is too small`);
    }
    const base = oldPages * WASM_PAGE_SIZE;
    this.#limit = base + pages * WASM_PAGE_SIZE;
    return alignUp(base, align);
  }

  #refresh(): void {
    this.#u8 = new Uint8Array(this.memory.buffer);
    this.#u32 = new Uint32Array(this.memory.buffer);
  }
}

function alignUp(value: number, align: number): number {
  return Math.ceil(value / align) * align;
}
