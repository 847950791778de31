/**
 * The kernels (dirty pages, transaction frames, page deltas, Xen block requests) behind one typed interface, in three flavors: Wasm with SIMD, Wasm
 * without, and the plain-TypeScript twin. All three take byte offsets into one {@link Heap}
 * and give identical results (the tests hold them to it), so callers pick by speed alone.
 */

import { getEnv } from "../runtime/env.ts";
import { ErrorCode, TandemError } from "../errors.ts";
import type { Heap } from "./heap.ts";
import { instantiateKernels, simdSupported } from "./loader.ts";
import { bitmapCount, bitmapMark, bitmapScan, bitmapScanClear } from "./twin/bitmap.ts";
import { pagesCompare, pagesCompareCopy } from "./twin/compare.ts";
import { BAD_INDEX, pagesZero } from "./twin/zero.ts";
import { pagesGather } from "./twin/gather.ts";
import { frameDecode, frameEncode } from "./twin/frame.ts";
import { DELTA_TOO_LARGE, deltaDecode, deltaEncode } from "./twin/delta.ts";
import { RING_OVERFLOW, blkifParse } from "./twin/blkif.ts";

/** Which implementation runs: Wasm SIMD, Wasm scalar, or the TypeScript twin. */
export type KernelFlavor = "simd" | "scalar" | "ts";

/** All flavors, fastest first. */
export const KERNEL_FLAVORS: readonly KernelFlavor[] = ["simd", "scalar", "ts"];

export { BAD_INDEX, DELTA_TOO_LARGE, RING_OVERFLOW };

/**
 * Entries past the count that a bitmap scan may write (assembly/bitmap.ts SCAN_SLACK): its
 * output needs room for `bits + SCAN_SLACK` u32s.
 */
export const SCAN_SLACK = 2;

/**
 * The kernels over one heap. Every pointer is a byte offset into that heap's memory; maps and
 * page lists are 4-byte aligned; a map of `bits` pages spans ceil(bits/64) u64 words.
 */
export interface Kernels {
  /** Which implementation this is. */
  readonly flavor: KernelFlavor;
  /** Sets bits [first, end) of the bitmap at `map`. */
  bitmapMark(map: number, first: number, end: number): void;
  /** Counts the set bits among the first `bits`. */
  bitmapCount(map: number, bits: number): number;
  /** Writes set bit indices ascending as u32 at `out` (room: bits + {@link SCAN_SLACK}); returns the count. */
  bitmapScan(map: number, bits: number, out: number): number;
  /** As bitmapScan, and clears the map in the same pass. */
  bitmapScanClear(map: number, bits: number, out: number): number;
  /** Writes the indices of pages of `ram` that differ from `shadow` at `out`; returns the count. */
  pagesCompare(ram: number, shadow: number, pages: number, out: number): number;
  /** As pagesCompare, and copies each changed page into `shadow`. */
  pagesCompareCopy(ram: number, shadow: number, pages: number, out: number): number;
  /** Writes the all-zero pages among `count` listed indices at `out`; returns the count or {@link BAD_INDEX}. */
  pagesZero(ram: number, pages: number, list: number, count: number, out: number): number;
  /**
   * Copies the listed pages that are not all zero back to back at `out` with their indices at
   * `full`, and writes the zero ones' indices at `zeros`, both in list order; returns how many
   * were copied (the rest were zero), or {@link BAD_INDEX}. See assembly/gather.ts.
   */
  pagesGather(ram: number, pages: number, list: number, count: number, out: number, full: number, zeros: number): number;
  /** Writes a transaction frame (header + payload) at `out`; returns its size. See assembly/frame.ts. */
  frameEncode(out: number, cmd: number, id: number, seq: number, payload: number, len: number): number;
  /** Decodes a piece of a frame stream, continuing from `state`; returns the number of events. */
  frameDecode(state: number, input: number, len: number, events: number, maxEvents: number, maxPayload: number, stopMask: number): number;
  /** Encodes page `next` against `prev` into `out`; the length, or {@link DELTA_TOO_LARGE} past `limit`. See assembly/delta.ts. */
  deltaEncode(prev: number, next: number, size: number, out: number, limit: number): number;
  /** Applies a delta to `page` in place; 0, or 1 if the delta is malformed. */
  deltaDecode(page: number, size: number, delta: number, len: number): number;
  /**
   * Copies and checks the blkif requests from `reqCons` toward `reqProd` of the ring at `ring`
   * into 128-byte records at `out`; the record count, or {@link RING_OVERFLOW} for an impossible
   * req_prod. See assembly/blkif.ts; host/xen/blkif/request-parser.ts is the typed caller.
   */
  blkifParse(ring: number, abi: number, entries: number, reqCons: number, reqProd: number, rspProdPvt: number, maxRequests: number, limits: number, out: number): number;
}

/**
 * The flavor to use when the caller does not choose: `TANDEM_KERNELS` if set (simd, scalar
 * or ts), else SIMD where the runtime has it, else scalar.
 */
export function defaultFlavor(): KernelFlavor {
  const wanted = getEnv("TANDEM_KERNELS");
  if (wanted !== undefined && wanted !== "") {
    if (!(KERNEL_FLAVORS as readonly string[]).includes(wanted)) {
      throw new TandemError(ErrorCode.BadArgument, `TANDEM_KERNELS=${wanted}: expected one of ${KERNEL_FLAVORS.join(", ")}`);
    }
    return wanted as KernelFlavor;
  }
  return simdSupported() ? "simd" : "scalar";
}

const cache = new WeakMap<Heap, Map<KernelFlavor, Kernels>>();

/** The kernels of `flavor` over `heap` (one instance per heap and flavor, made on first use). */
export function kernelsFor(heap: Heap, flavor: KernelFlavor = defaultFlavor()): Kernels {
  let byFlavor = cache.get(heap);
  if (!byFlavor) cache.set(heap, (byFlavor = new Map()));
  let kernels = byFlavor.get(flavor);
  if (!kernels) {
    kernels = flavor === "ts" ? twinKernels(heap) : wasmKernels(heap, flavor);
    byFlavor.set(flavor, kernels);
  }
  return kernels;
}

function wasmKernels(heap: Heap, flavor: "simd" | "scalar"): Kernels {
  const e = instantiateKernels(heap.memory, flavor);
  // Wasm returns u32 counts as i32; `>>> 0` restores BAD_INDEX (and any count >= 2^31).
  return {
    flavor,
    bitmapMark: e.bitmap_mark,
    bitmapCount: (map, bits) => e.bitmap_count(map, bits) >>> 0,
    bitmapScan: (map, bits, out) => e.bitmap_scan(map, bits, out) >>> 0,
    bitmapScanClear: (map, bits, out) => e.bitmap_scan_clear(map, bits, out) >>> 0,
    pagesCompare: (ram, shadow, pages, out) => e.pages_compare(ram, shadow, pages, out) >>> 0,
    pagesCompareCopy: (ram, shadow, pages, out) => e.pages_compare_copy(ram, shadow, pages, out) >>> 0,
    pagesZero: (ram, pages, list, count, out) => e.pages_zero(ram, pages, list, count, out) >>> 0,
    pagesGather: (ram, pages, list, count, out, full, zeros) => e.pages_gather(ram, pages, list, count, out, full, zeros) >>> 0,
    frameEncode: (out, cmd, id, seq, payload, len) => e.frame_encode(out, cmd, id, seq, payload, len) >>> 0,
    frameDecode: (state, input, len, events, maxEvents, maxPayload, stopMask) =>
      e.frame_decode(state, input, len, events, maxEvents, maxPayload, stopMask) >>> 0,
    deltaEncode: (prev, next, size, out, limit) => e.delta_encode(prev, next, size, out, limit) >>> 0,
    deltaDecode: (page, size, delta, len) => e.delta_decode(page, size, delta, len) >>> 0,
    blkifParse: (ring, abi, entries, reqCons, reqProd, rspProdPvt, maxRequests, limits, out) =>
      e.blkif_parse(ring, abi, entries, reqCons, reqProd, rspProdPvt, maxRequests, limits, out) >>> 0,
  };
}

function twinKernels(heap: Heap): Kernels {
  return {
    flavor: "ts",
    bitmapMark: (map, first, end) => bitmapMark(heap, map, first, end),
    bitmapCount: (map, bits) => bitmapCount(heap, map, bits),
    bitmapScan: (map, bits, out) => bitmapScan(heap, map, bits, out),
    bitmapScanClear: (map, bits, out) => bitmapScanClear(heap, map, bits, out),
    pagesCompare: (ram, shadow, pages, out) => pagesCompare(heap, ram, shadow, pages, out),
    pagesCompareCopy: (ram, shadow, pages, out) => pagesCompareCopy(heap, ram, shadow, pages, out),
    pagesZero: (ram, pages, list, count, out) => pagesZero(heap, ram, pages, list, count, out),
    pagesGather: (ram, pages, list, count, out, full, zeros) => pagesGather(heap, ram, pages, list, count, out, full, zeros),
    frameEncode: (out, cmd, id, seq, payload, len) => frameEncode(heap, out, cmd, id, seq, payload, len),
    frameDecode: (state, input, len, events, maxEvents, maxPayload, stopMask) =>
      frameDecode(heap, state, input, len, events, maxEvents, maxPayload, stopMask),
    deltaEncode: (prev, next, size, out, limit) => deltaEncode(heap, prev, next, size, out, limit),
    deltaDecode: (page, size, delta, len) => deltaDecode(heap, page, size, delta, len),
    blkifParse: (ring, abi, entries, reqCons, reqProd, rspProdPvt, maxRequests, limits, out) =>
      blkifParse(heap, ring, abi, entries, reqCons, reqProd, rspProdPvt, maxRequests, limits, out),
  };
}
