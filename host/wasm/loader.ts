/**
 * The one Wasm loader. Kernel bytes are embedded at build time (embedded.generated.ts), so
 * loading is identical on Node, Deno and Bun. Each flavor's module is compiled once and
 * instantiated per memory: a kernel instance always imports the memory it works on, which
 * may be a memory tandem created or an emulator's own.
 */

import { KERNEL_WASM_BASE64 } from "./embedded.generated.ts";
import { ErrorCode, TandemError } from "../errors.ts";

/** Instruction-set flavors of the compiled kernels. */
export type WasmFlavor = "simd" | "scalar";

/** One compiled module: a flavor, for a memory of its own kind (shared by threads, or not). */
type ModuleKey = keyof typeof KERNEL_WASM_BASE64;

/** The raw exports of a kernel instance (see assembly/index.ts for each contract). */
export interface KernelExports {
  bitmap_mark(map: number, first: number, end: number): void;
  bitmap_count(map: number, bits: number): number;
  bitmap_scan(map: number, bits: number, out: number): number;
  bitmap_scan_clear(map: number, bits: number, out: number): number;
  pages_compare(ram: number, shadow: number, pages: number, out: number): number;
  pages_compare_copy(ram: number, shadow: number, pages: number, out: number): number;
  pages_zero(ram: number, pages: number, list: number, count: number, out: number): number;
  pages_gather(ram: number, pages: number, list: number, count: number, out: number, full: number, zeros: number): number;
  frame_encode(out: number, cmd: number, id: number, seq: number, payload: number, len: number): number;
  frame_decode(state: number, input: number, len: number, events: number, maxEvents: number, maxPayload: number, stopMask: number): number;
  delta_encode(prev: number, next: number, size: number, out: number, limit: number): number;
  delta_decode(page: number, size: number, delta: number, len: number): number;
  blkif_parse(ring: number, abi: number, entries: number, reqCons: number, reqProd: number, rspProdPvt: number, maxRequests: number, limits: number, out: number): number;
}

const modules = new Map<ModuleKey, WebAssembly.Module>();
const bytesCache = new Map<ModuleKey, Uint8Array<ArrayBuffer>>();

/**
 * The embedded bytes of one flavor's module. A module imports its memory either as unshared or
 * as shared (what a memory that threads share must be imported as), never both: `shared` picks.
 */
export function kernelBytes(flavor: WasmFlavor, shared = false): Uint8Array<ArrayBuffer> {
  const key: ModuleKey = shared ? `${flavor}-shared` : flavor;
  let bytes = bytesCache.get(key);
  if (!bytes) {
    const text = atob(KERNEL_WASM_BASE64[key]);
    bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    bytesCache.set(key, bytes);
  }
  return bytes;
}

/** Whether `memory` is shared between threads (its buffer a SharedArrayBuffer). */
export function isSharedMemory(memory: WebAssembly.Memory): boolean {
  return typeof SharedArrayBuffer !== "undefined" && memory.buffer instanceof SharedArrayBuffer;
}

let simd: boolean | undefined;

/** Whether this runtime can run Wasm SIMD (validates the SIMD module itself, once per process). */
export function simdSupported(): boolean {
  simd ??= WebAssembly.validate(kernelBytes("simd"));
  return simd;
}

/** The compiled module of one flavor for unshared or shared memories (compiled once, synchronously: it is a few KB). */
export function kernelModule(flavor: WasmFlavor, shared = false): WebAssembly.Module {
  const key: ModuleKey = shared ? `${flavor}-shared` : flavor;
  let module = modules.get(key);
  if (!module) {
    if (flavor === "simd" && !simdSupported()) {
      throw new TandemError(ErrorCode.KernelUnavailable, "this runtime has no Wasm SIMD; use the scalar kernels");
    }
    module = new WebAssembly.Module(kernelBytes(flavor, shared));
    modules.set(key, module);
  }
  return module;
}

/**
 * A new kernel instance of `flavor` working on `memory`, shared or not. Instantiation writes
 * nothing.
 */
export function instantiateKernels(memory: WebAssembly.Memory, flavor: WasmFlavor): KernelExports {
  const instance = new WebAssembly.Instance(kernelModule(flavor, isSharedMemory(memory)), { env: { memory } });
  return instance.exports as unknown as KernelExports;
}
