import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode } from "../host/errors.ts";
import { errorCode } from "./support/errors.ts";
import { Heap, WASM_PAGE_SIZE } from "../host/wasm/heap.ts";
import { KERNEL_FLAVORS, defaultFlavor, kernelsFor } from "../host/wasm/kernels.ts";
import { instantiateKernels, kernelBytes, simdSupported } from "../host/wasm/loader.ts";

const test = suite("wasm loader and heap");

test("embedded modules are valid Wasm and SIMD is available on this runtime", () => {
  for (const flavor of ["simd", "scalar"] as const) {
    for (const shared of [false, true]) {
      const bytes = kernelBytes(flavor, shared);
      assert.equal(Array.from(bytes.subarray(0, 4)), [0x00, 0x61, 0x73, 0x6d], `${flavor} magic`);
      assert.ok(WebAssembly.validate(bytes), `${flavor}${shared ? " (shared)" : ""} validates`);
    }
  }
  // Node 20+, Deno and Bun all have Wasm SIMD; if this fails the runtime is not supported.
  assert.ok(simdSupported());
  assert.is(defaultFlavor(), "simd");
});

test("a kernel module imports its memory and has no data segment, export or start that writes it", () => {
  for (const flavor of ["simd", "scalar"] as const) {
    for (const shared of [false, true]) {
      const module = new WebAssembly.Module(kernelBytes(flavor, shared));
      assert.equal(WebAssembly.Module.imports(module), [{ module: "env", name: "memory", kind: "memory" }]);
      const memory = new WebAssembly.Memory(shared ? { initial: 2, maximum: 16, shared: true } : { initial: 2 });
      const bytes = new Uint8Array(memory.buffer);
      for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 13 + 7) & 0xff;
      instantiateKernels(memory, flavor);
      const after = new Uint8Array(memory.buffer);
      for (let i = 0; i < after.length; i++) {
        if (after[i] !== ((i * 13 + 7) & 0xff)) assert.unreachable(`${flavor}${shared ? " (shared)" : ""}: instantiation wrote byte ${i}`);
      }
    }
  }
});

test("a shared memory gets the shared build, which finds the same changed pages as the unshared one", () => {
  const pages = 64;
  const fill = (memory: WebAssembly.Memory) => {
    const u8 = new Uint8Array(memory.buffer);
    for (let i = 0; i < pages * 4096; i++) u8[i] = (i * 31) & 0xff;
    u8.copyWithin(pages * 4096, 0, pages * 4096);
    for (const page of [0, 7, 63]) u8[page * 4096 + 4095] ^= 0x5a;
  };
  const size = Math.ceil((2 * pages * 4096 + 4 * pages) / WASM_PAGE_SIZE);
  const shared = new WebAssembly.Memory({ initial: size, maximum: 64, shared: true });
  const plain = new WebAssembly.Memory({ initial: size });
  for (const flavor of ["simd", "scalar"] as const) {
    const found = [shared, plain].map((memory) => {
      fill(memory);
      const n = instantiateKernels(memory, flavor).pages_compare(0, pages * 4096, pages, 2 * pages * 4096);
      return Array.from(new Uint32Array(memory.buffer, 2 * pages * 4096, n));
    });
    assert.equal(found[0], [0, 7, 63], `${flavor}, shared`);
    assert.equal(found[1], found[0], `${flavor}: shared and unshared differ`);
  }
});

test("TANDEM_KERNELS picks the flavor, and a wrong value is a coded error", () => {
  const saved = process.env.TANDEM_KERNELS;
  try {
    for (const flavor of KERNEL_FLAVORS) {
      process.env.TANDEM_KERNELS = flavor;
      assert.is(defaultFlavor(), flavor);
    }
    process.env.TANDEM_KERNELS = "avx512";
    assert.is(errorCode(() => defaultFlavor()), ErrorCode.BadArgument, "unknown flavor");
  } finally {
    if (saved === undefined) delete process.env.TANDEM_KERNELS;
    else process.env.TANDEM_KERNELS = saved;
  }
});

test("heap views survive memory.grow, from the host or from anyone else", () => {
  const heap = Heap.create(WASM_PAGE_SIZE);
  const a = heap.alloc(16);
  heap.u8[a] = 42;
  const old = heap.u8;
  heap.memory.grow(1); // someone else grows it: the old view detaches
  assert.is(old.length, 0, "the old view is detached, as the spec says");
  assert.is(heap.u8[a], 42, "a fresh view reads the same byte");
  assert.is(heap.u8.length, 2 * WASM_PAGE_SIZE);
  assert.is(heap.u32.length, (2 * WASM_PAGE_SIZE) / 4);
});

test("kernels keep working on a memory that grew after instantiation", () => {
  for (const flavor of KERNEL_FLAVORS) {
    const heap = Heap.create(0);
    const k = kernelsFor(heap, flavor);
    const map = heap.alloc(8);
    k.bitmapMark(map, 1, 3);
    const big = heap.alloc(3 * WASM_PAGE_SIZE); // grows the memory
    assert.ok(big >= WASM_PAGE_SIZE - 64);
    k.bitmapMark(map, 5, 6);
    assert.is(k.bitmapCount(map, 64), 3, flavor);
  }
});

test("alloc aligns, zeroes, and takes space only from the reserved range or new pages", () => {
  const memory = new WebAssembly.Memory({ initial: 2 });
  new Uint8Array(memory.buffer).fill(0xee);
  const heap = new Heap(memory, { reserved: { offset: 1000, size: 3000 } });
  const a = heap.alloc(100, 256);
  assert.is(a, 1024, "aligned inside the reserved range");
  assert.ok(heap.u8.subarray(a, a + 100).every((b) => b === 0), "zeroed");
  assert.is(heap.u8[999], 0xee, "the emulator's byte before the range is untouched");
  const b = heap.alloc(5000);
  assert.ok(b >= 2 * WASM_PAGE_SIZE, "past the reserved range, space comes from grown pages");
  assert.ok(heap.u8.subarray(1124, 2 * WASM_PAGE_SIZE).every((x) => x === 0xee), "the rest of the emulator's bytes are untouched");
});

test("alloc fails with codes: bad sizes, no growth allowed, memory at its maximum", () => {
  const heap = new Heap(new WebAssembly.Memory({ initial: 1 }), { reserved: { offset: 0, size: 128 }, grow: false });
  assert.is(errorCode(() => heap.alloc(-1)), ErrorCode.BadArgument, "negative size");
  assert.is(errorCode(() => heap.alloc(8, 3)), ErrorCode.BadArgument, "alignment not a power of two");
  heap.alloc(64);
  assert.is(errorCode(() => heap.alloc(128)), ErrorCode.HeapFull, "reserved range full, growth off");
  const capped = new Heap(new WebAssembly.Memory({ initial: 1, maximum: 2 }));
  capped.alloc(WASM_PAGE_SIZE / 2);
  assert.is(errorCode(() => capped.alloc(4 * WASM_PAGE_SIZE)), ErrorCode.HeapFull, "memory maximum reached");
  const outside = () => new Heap(new WebAssembly.Memory({ initial: 1 }), { reserved: { offset: 60000, size: 10000 } });
  assert.is(errorCode(outside), ErrorCode.BadRegion, "reserved range past the end");
});

test.run();
