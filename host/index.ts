/**
 * tandem: fault tolerance, live migration, paravirtual disks and copy-on-write images for
 * guests of JavaScript emulators. This is the library's public surface.
 *
 * @packageDocumentation
 */

export { ErrorCode, TandemError } from "./errors.ts";
export { VERSION } from "./wasm/embedded.generated.ts";
export { Heap, WASM_PAGE_SIZE, type HeapOptions } from "./wasm/heap.ts";
export { simdSupported } from "./wasm/loader.ts";
export { BAD_INDEX, KERNEL_FLAVORS, defaultFlavor, kernelsFor, type KernelFlavor, type Kernels } from "./wasm/kernels.ts";
export { GuestMemory, MAX_GUEST_BYTES, PAGE_SHIFT, PAGE_SIZE, type GuestRegion } from "./memory/guest-memory.ts";
export { DirtyLogBase, DirtyLogState, nextDirtyLogState, type DirtyLog, type DirtyLogEvent } from "./memory/dirty-log.ts";
export { BitmapDirtyLog, type BitmapDirtyLogOptions } from "./memory/bitmap-dirty-log.ts";
export { DetectingDirtyLog, type DetectingDirtyLogOptions } from "./memory/detecting-dirty-log.ts";
export { ZeroPageFinder, type ZeroPageFinderOptions } from "./memory/zero-pages.ts";
