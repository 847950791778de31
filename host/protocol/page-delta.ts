/**
 * Page deltas (assembly/delta.ts has the format): what changed in a page since the copy the
 * receiver holds, or nothing when the full page is cheaper.
 */

import { ErrorCode, TandemError } from "../errors.ts";
import { Heap } from "../wasm/heap.ts";
import { DELTA_TOO_LARGE, kernelsFor, type KernelFlavor, type Kernels } from "../wasm/kernels.ts";

/** Options of a {@link PageDeltaCodec}. */
export interface PageDeltaOptions {
  /** Bytes per page. Default 4096; at most 1 MiB (three ULEB128 bytes cover any run). */
  pageSize?: number;
  /** Largest delta worth sending. Default pageSize - 8: a delta entry then never costs more than a full page's. */
  limit?: number;
  /** Which kernels to run; default: see {@link defaultFlavor}. */
  kernels?: KernelFlavor;
}

/** Encodes and applies page deltas. */
export class PageDeltaCodec {
  /** Bytes per page. */
  readonly pageSize: number;
  readonly #limit: number;
  readonly #heap: Heap;
  readonly #kernels: Kernels;
  readonly #a: number;
  readonly #b: number;
  readonly #out: number;

  constructor(options: PageDeltaOptions = {}) {
    const pageSize = options.pageSize ?? 4096;
    if (!Number.isInteger(pageSize) || pageSize <= 0 || pageSize > 1 << 20) {
      throw new TandemError(ErrorCode.BadArgument, `pageSize ${pageSize}: expected 1 to 1 MiB`);
    }
    this.pageSize = pageSize;
    this.#limit = Math.max(0, Math.min(options.limit ?? pageSize - 8, pageSize * 2));
    this.#heap = Heap.create(3 * pageSize + this.#limit + 256);
    this.#a = this.#heap.alloc(pageSize);
    this.#b = this.#heap.alloc(pageSize);
    this.#out = this.#heap.alloc(Math.max(this.#limit, pageSize));
    this.#kernels = kernelsFor(this.#heap, options.kernels);
  }

  /** Which kernels this codec runs. */
  get flavor(): KernelFlavor {
    return this.#kernels.flavor;
  }

  /** The delta that turns `prev` into `next` (a new array), or undefined if it would pass the limit. */
  encode(prev: Uint8Array, next: Uint8Array): Uint8Array | undefined {
    this.#checkPage(prev, "prev");
    this.#checkPage(next, "next");
    const u8 = this.#heap.u8;
    u8.set(prev, this.#a);
    u8.set(next, this.#b);
    const n = this.#kernels.deltaEncode(this.#a, this.#b, this.pageSize, this.#out, this.#limit);
    return n === DELTA_TOO_LARGE ? undefined : this.#heap.u8.slice(this.#out, this.#out + n);
  }

  /** Applies `delta` to `page` in place. A malformed delta is E_STREAM_FORMAT and leaves `page` as it was. */
  apply(page: Uint8Array, delta: Uint8Array): void {
    this.#checkPage(page, "page");
    if (delta.length > this.#heap.u8.length - this.#out) {
      throw new TandemError(ErrorCode.StreamFormat, `a ${delta.length}-byte delta for a ${this.pageSize}-byte page`);
    }
    const u8 = this.#heap.u8;
    u8.set(page, this.#a);
    u8.set(delta, this.#out);
    if (this.#kernels.deltaDecode(this.#a, this.pageSize, this.#out, delta.length) !== 0) {
      throw new TandemError(ErrorCode.StreamFormat, "a page delta runs past its page or its own end");
    }
    page.set(this.#heap.u8.subarray(this.#a, this.#a + this.pageSize));
  }

  #checkPage(bytes: Uint8Array, name: string): void {
    if (bytes.length !== this.pageSize) {
      throw new TandemError(ErrorCode.BadArgument, `${name} has ${bytes.length} bytes, expected a ${this.pageSize}-byte page`);
    }
  }
}
