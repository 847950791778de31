/**
 * Helpers to run the same kernel call on every flavor over identical memory, and to check
 * that the results agree with the TypeScript twin.
 */

import * as assert from "uvu/assert";
import { Heap } from "../../host/wasm/heap.ts";
import { KERNEL_FLAVORS, kernelsFor, type KernelFlavor, type Kernels } from "../../host/wasm/kernels.ts";

/** The Wasm flavors that can run here (SIMD is skipped only if the runtime lacks it). */
export const FLAVORS: readonly KernelFlavor[] = KERNEL_FLAVORS;

/** One heap per flavor, each a byte-for-byte copy of `image`, with that flavor's kernels. */
export function heapsFrom(image: Uint8Array): { flavor: KernelFlavor; heap: Heap; k: Kernels }[] {
  return FLAVORS.map((flavor) => {
    const heap = Heap.create(image.length);
    heap.alloc(image.length);
    heap.u8.set(image);
    return { flavor, heap, k: kernelsFor(heap, flavor) };
  });
}

/**
 * Runs `call` on a copy of `image` for every flavor; asserts every flavor returns what the
 * twin returns and leaves the heap bytes in `[from, to)` exactly as the twin does.
 * Returns the twin's result and final heap.
 */
export function agree<T>(
  image: Uint8Array,
  call: (k: Kernels, heap: Heap) => T,
  what: string,
  compare: { from: number; to: number } = { from: 0, to: image.length },
): { result: T; heap: Heap } {
  const runs = heapsFrom(image).map(({ flavor, heap, k }) => ({ flavor, heap, result: call(k, heap) }));
  const twin = runs.find((r) => r.flavor === "ts")!;
  for (const run of runs) {
    if (run === twin) continue;
    assert.equal(run.result, twin.result, `${what}: ${run.flavor} result differs from the twin`);
    const got = run.heap.u8.subarray(compare.from, compare.to);
    const want = twin.heap.u8.subarray(compare.from, compare.to);
    if (!bytesEqual(got, want)) assert.unreachable(`${what}: ${run.flavor} left memory different from the twin`);
  }
  return { result: twin.result, heap: twin.heap };
}

/** Byte equality without building giant diffs on failure. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
