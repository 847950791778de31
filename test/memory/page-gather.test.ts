import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode } from "../../host/errors.ts";
import { GuestMemory, PAGE_SIZE } from "../../host/memory/guest-memory.ts";
import { GATHER_PAGES, PageGatherer, type PagesInHeap } from "../../host/memory/page-gather.ts";
import { seededRandom } from "../../host/prng.ts";
import { Heap } from "../../host/wasm/heap.ts";
import { BAD_INDEX } from "../../host/wasm/kernels.ts";
import { concat } from "../support/bytes.ts";
import { errorCode } from "../support/errors.ts";
import { FLAVORS, agree, bytesEqual } from "../support/flavors.ts";

const test = suite("page gather: the kernel equals its twin; the gatherer copies each listed page or flags it zero");

/** Fills `pages` pages at `at` of `bytes`: about 40% all zero, the rest with a byte set somewhere. */
function fillPages(bytes: Uint8Array, at: number, pages: number, random: () => number): Set<number> {
  const zero = new Set<number>();
  for (let p = 0; p < pages; p++) {
    if (random() < 0.4) {
      zero.add(p);
      continue;
    }
    // First byte, last byte, or anywhere: a zero test that stops early or late still sees it.
    const where = [0, PAGE_SIZE - 1, Math.floor(random() * PAGE_SIZE)][Math.floor(random() * 3)];
    bytes[at + p * PAGE_SIZE + where] = 1 + Math.floor(random() * 255);
  }
  return zero;
}

test("the kernel copies the listed non-zero pages back to back and lists both kinds in order, at any alignment", () => {
  const random = seededRandom(61);
  for (const [pages, ram] of [[0, 0], [1, 0], [9, 4096], [23, 3], [40, 64 + 8]]) {
    const count = pages === 0 ? 0 : 30;
    const list = ram + pages * PAGE_SIZE + 4 - ((ram + pages * PAGE_SIZE) & 3);
    const full = list + count * 4;
    const zeros = full + count * 4;
    const out = zeros + count * 4 + 5; // unaligned on purpose: pages may sit anywhere
    const image = new Uint8Array(out + count * PAGE_SIZE + 64);
    const zero = fillPages(image, ram, pages, random);
    const listed = Array.from({ length: count }, () => Math.floor(random() * pages));
    new Uint32Array(image.buffer, list, count).set(listed);
    const label = `${pages} pages at ${ram}`;
    const { result, heap } = agree(image, (k) => k.pagesGather(ram, pages, list, count, out, full, zeros), label);
    const kept = listed.filter((p) => !zero.has(p));
    assert.is(result, kept.length, label);
    assert.equal(Array.from(heap.u32.subarray(full >>> 2, (full >>> 2) + result)), kept, `${label}: full list`);
    assert.equal(Array.from(heap.u32.subarray(zeros >>> 2, (zeros >>> 2) + count - result)), listed.filter((p) => zero.has(p)), `${label}: zero list`);
    kept.forEach((p, i) => {
      const want = heap.u8.subarray(ram + p * PAGE_SIZE, ram + (p + 1) * PAGE_SIZE);
      assert.ok(bytesEqual(heap.u8.subarray(out + i * PAGE_SIZE, out + (i + 1) * PAGE_SIZE), want), `${label}: page ${p} copied`);
    });
  }
});

test("the kernel refuses a page index past the end, in a group of four or in the pages after the last group", () => {
  for (const listed of [[0, 3, 1, 2, 1], [0, 1, 2, 0, 3]]) {
    const list = 3 * PAGE_SIZE;
    const image = new Uint8Array(list + 64 + 5 * PAGE_SIZE);
    new Uint32Array(image.buffer, list, listed.length).set(listed);
    const { result } = agree(image, (k) => k.pagesGather(0, 3, list, listed.length, list + 64, list + 20, list + 40), `bad index in ${listed}`, { from: 0, to: 0 });
    assert.is(result, BAD_INDEX, `${listed}`);
  }
});

/** What a gatherer reports for `list`: every window's three parts, joined. */
function gatherAll(gatherer: PageGatherer, list: Uint32Array) {
  const full: number[] = [];
  const zeros: number[] = [];
  const bytes: Uint8Array[] = [];
  let windows = 0;
  gatherer.gather(list, (f, b, z) => {
    assert.is(b.length, f.length * PAGE_SIZE);
    assert.ok(f.length + z.length <= GATHER_PAGES);
    full.push(...f);
    zeros.push(...z);
    bytes.push(b.slice());
    windows++;
  });
  return { full, zeros, bytes: concat(bytes), windows };
}

test("a gatherer over a guest (in place and staged) or over pages in a heap gathers every listed page, for every flavor", () => {
  const pages = GATHER_PAGES + 90; // two windows, the second part full
  for (const flavor of FLAVORS) {
    const sources: { label: string; source: GuestMemory | PagesInHeap; bytes: () => Uint8Array }[] = [];
    for (const backing of [new WebAssembly.Memory({ initial: 40 }), new ArrayBuffer(pages * PAGE_SIZE + 512)]) {
      const guest = new GuestMemory(backing, { offset: 512, size: pages * PAGE_SIZE });
      sources.push({ label: backing instanceof ArrayBuffer ? "staged" : "in place", source: guest, bytes: () => guest.bytes() });
    }
    const heap = Heap.create(pages * PAGE_SIZE + (2 << 20));
    const ptr = heap.alloc(pages * PAGE_SIZE, PAGE_SIZE);
    sources.push({ label: "in a heap", source: { heap, ptr, pageCount: pages }, bytes: () => heap.u8.subarray(ptr, ptr + pages * PAGE_SIZE) });
    for (const { label, source, bytes } of sources) {
      const what = `${flavor} ${label}`;
      const zero = fillPages(bytes(), 0, pages, seededRandom(62));
      const gatherer = new PageGatherer(source, { kernels: flavor });
      const random = seededRandom(63);
      const list = Uint32Array.from({ length: 700 }, () => Math.floor(random() * pages));
      const got = gatherAll(gatherer, list);
      const kept = Array.from(list).filter((p) => !zero.has(p));
      assert.is(got.windows, Math.ceil(list.length / GATHER_PAGES), what);
      assert.equal(got.full, kept, `${what}: full pages`);
      assert.equal(got.zeros, Array.from(list).filter((p) => zero.has(p)), `${what}: zero pages`);
      assert.ok(bytesEqual(got.bytes, concat(kept.map((p) => bytes().slice(p * PAGE_SIZE, (p + 1) * PAGE_SIZE)))), `${what}: bytes`);
      assert.is(gatherAll(gatherer, new Uint32Array(0)).windows, 0, `${what}: empty list`);
      assert.is(errorCode(() => gatherer.gather(Uint32Array.of(0, pages), () => assert.unreachable("visited"))), ErrorCode.OutOfRange, `${what}: page past the end`);
    }
  }
});

test.run();
