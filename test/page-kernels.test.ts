import { suite } from "uvu";
import * as assert from "uvu/assert";
import { seededRandom } from "../host/prng.ts";
import { Heap } from "../host/wasm/heap.ts";
import { BAD_INDEX, kernelsFor } from "../host/wasm/kernels.ts";
import { FLAVORS, agree, bytesEqual } from "./support/flavors.ts";

const test = suite("page kernels: compare, compare-copy and zero detection equal the twin");
const PAGE = 4096;

/** An image with `pages` RAM pages at `ram` and a shadow at `shadow`, shadow = RAM, then changes. */
function ramAndShadow(pages: number, ram: number, shadow: number, random: () => number) {
  const out = align4(Math.max(ram, shadow) + pages * PAGE + 64);
  const bytes = new Uint8Array(out + pages * 4 + 64);
  for (let i = 0; i < pages * PAGE; i++) bytes[ram + i] = random() < 0.5 ? 0 : random() * 256;
  bytes.copyWithin(shadow, ram, ram + pages * PAGE);
  const changed: number[] = [];
  for (let p = 0; p < pages; p++) {
    if (random() < 0.3) {
      // First byte, last byte, or anywhere: a compare that stops early or late still sees it.
      const where = [0, PAGE - 1, Math.floor(random() * PAGE)][Math.floor(random() * 3)];
      bytes[ram + p * PAGE + where] ^= 1 + Math.floor(random() * 255);
      changed.push(p);
    }
  }
  return { bytes, out, changed };
}

/** Page lists are u32 arrays: the kernels' contract has them 4-byte aligned. */
function align4(n: number): number {
  return (n + 3) & ~3;
}

function listAt(heap: Heap, out: number, n: number): number[] {
  return Array.from(heap.u32.subarray(out >>> 2, (out >>> 2) + n));
}

test("compare lists exactly the changed pages, at aligned and unaligned addresses", () => {
  const random = seededRandom(21);
  const layouts = [[0, 40 * PAGE], [64, 64 + 40 * PAGE], [1, 40 * PAGE + 3], [8, 40 * PAGE + 8], [4096 + 5, 13]];
  for (const pages of [0, 1, 2, 17, 33]) {
    for (const [ram, shadowGap] of layouts) {
      const shadow = ram + Math.max(shadowGap, pages * PAGE);
      const { bytes, out, changed } = ramAndShadow(pages, ram, shadow, random);
      const label = `${pages} pages, ram@${ram} shadow@${shadow}`;
      const found = agree(bytes, (k, h) => listAt(h, out, k.pagesCompare(ram, shadow, pages, out)), `compare ${label}`, { from: 0, to: out });
      assert.equal(found.result, changed, label);
    }
  }
});

test("compare-copy lists the changed pages and leaves the shadow equal to RAM", () => {
  const random = seededRandom(22);
  for (const [pages, ram] of [[1, 0], [19, 3], [40, 4096]]) {
    const shadow = ram + pages * PAGE + 12;
    const { bytes, out, changed } = ramAndShadow(pages, ram, shadow, random);
    const { result, heap } = agree(bytes, (k, h) => listAt(h, out, k.pagesCompareCopy(ram, shadow, pages, out)), `compare-copy ${pages}`, { from: 0, to: out });
    assert.equal(result, changed);
    assert.ok(bytesEqual(heap.u8.subarray(ram, ram + pages * PAGE), heap.u8.subarray(shadow, shadow + pages * PAGE)), "shadow equals RAM");
    const again = agree(heap.u8.slice(), (k) => k.pagesCompare(ram, shadow, pages, out), "compare after copy", { from: 0, to: out });
    assert.is(again.result, 0, "nothing differs after the copy");
  }
});

test("zero detection over lists in any order, with repeats", () => {
  const random = seededRandom(23);
  const pages = 50;
  for (const ram of [0, 5, 4096]) {
    const list = align4(ram + pages * PAGE + 64);
    const out = list + 200 * 4;
    const bytes = new Uint8Array(out + 200 * 4 + 64);
    const zero = new Set<number>();
    for (let p = 0; p < pages; p++) {
      if (random() < 0.5) zero.add(p);
      // A non-zero page has one non-zero byte, at its start, its end or anywhere.
      else bytes[ram + p * PAGE + [0, PAGE - 1, Math.floor(random() * PAGE)][p % 3]] = 1 + Math.floor(random() * 255);
    }
    const listed = Array.from({ length: 120 }, () => Math.floor(random() * pages));
    new Uint32Array(bytes.buffer, list, listed.length).set(listed);
    const found = agree(bytes, (k, h) => listAt(h, out, k.pagesZero(ram, pages, list, listed.length, out)), `zero ram@${ram}`, { from: 0, to: out });
    assert.equal(found.result, listed.filter((p) => zero.has(p)));
  }
});

test("zero detection refuses an index past the guest with BAD_INDEX", () => {
  const bytes = new Uint8Array(4 * PAGE + 64);
  const list = 3 * PAGE;
  new Uint32Array(bytes.buffer, list, 3).set([0, 2, 3]);
  const { result } = agree(bytes, (k) => k.pagesZero(0, 3, list, 3, list + 16), "bad index");
  assert.is(result, BAD_INDEX);
});

test("kernels over an imported memory scan a region at a non-zero offset in place", () => {
  // An 'emulator' memory: its own bytes around a guest region at an odd offset.
  for (const flavor of FLAVORS) {
    const memory = new WebAssembly.Memory({ initial: 4 });
    const before = new Uint8Array(memory.buffer);
    for (let i = 0; i < before.length; i++) before[i] = (i * 7) & 0xff;
    const heap = new Heap(memory);
    const ram = 12_345;
    const pages = 10;
    const shadow = heap.alloc(pages * PAGE);
    const out = heap.alloc(pages * 4);
    heap.u8.copyWithin(shadow, ram, ram + pages * PAGE);
    heap.u8[ram + 3 * PAGE + 100] ^= 0xff;
    heap.u8[ram + 9 * PAGE + 4095] ^= 0xff;
    const k = kernelsFor(heap, flavor);
    const n = k.pagesCompareCopy(ram, shadow, pages, out);
    assert.equal(listAt(heap, out, n), [3, 9], `${flavor}: changed pages`);
    // The emulator's bytes outside the guest region were never written.
    const now = heap.u8;
    for (const [from, to] of [[0, ram], [ram + pages * PAGE, 4 * 65536]]) {
      for (let i = from; i < to; i++) {
        if (now[i] !== ((i * 7) & 0xff)) assert.unreachable(`${flavor}: byte ${i} outside the guest changed`);
      }
    }
  }
});

test.run();
