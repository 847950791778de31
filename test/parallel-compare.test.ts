import { cpus } from "node:os";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode } from "../host/errors.ts";
import { closeCompareHelper, compareHelper } from "../host/memory/compare-helper.ts";
import { DetectingDirtyLog, PARALLEL_MIN_PAGES } from "../host/memory/detecting-dirty-log.ts";
import { DirtyLogState } from "../host/memory/dirty-log.ts";
import { GuestMemory, PAGE_SIZE } from "../host/memory/guest-memory.ts";
import { seededRandom } from "../host/prng.ts";
import type { WasmFlavor } from "../host/wasm/loader.ts";
import { errorCode } from "./support/errors.ts";

const test = suite("parallel compare");

const WASM_FLAVORS: readonly WasmFlavor[] = ["simd", "scalar"];
/** The helper is only used on machines with more than one CPU; elsewhere the log runs alone. */
const MULTICORE = cpus().length > 1;
/** Like v86: the RAM sits after other data in the emulator's memory, not at 0. */
const OFFSET = 3 * 65536 + 5 * PAGE_SIZE;
/** Odd, so the halves differ by a page. */
const BIG = PARALLEL_MIN_PAGES + 37;

const all = (n: number) => Array.from({ length: n }, (_, i) => i);

/** A shared memory with a guest of `pages` pages at {@link OFFSET}, as v86 will have. */
function sharedGuest(pages: number): { memory: WebAssembly.Memory; guest: GuestMemory } {
  const bytes = OFFSET + pages * PAGE_SIZE;
  const memory = new WebAssembly.Memory({ initial: Math.ceil(bytes / 65536), maximum: 65536, shared: true });
  return { memory, guest: new GuestMemory(memory, { offset: OFFSET, size: pages * PAGE_SIZE }) };
}

/**
 * The naive reference: the pages of `ram` that differ from `prev`, word by word (exact like
 * a byte compare), bringing `prev` up to date.
 */
function naiveDiff(ram: Uint8Array, prev: Uint8Array): number[] {
  const now = new Uint32Array(ram.buffer, ram.byteOffset, ram.length / 4);
  const old = new Uint32Array(prev.buffer, prev.byteOffset, prev.length / 4);
  const words = PAGE_SIZE / 4;
  const changed: number[] = [];
  for (let page = 0, pages = ram.length / PAGE_SIZE; page < pages; page++) {
    for (let i = page * words, end = i + words; i < end; i++) {
      if (now[i] !== old[i]) {
        changed.push(page);
        old.set(now.subarray(page * words, end), page * words);
        break;
      }
    }
  }
  return changed;
}

/** One epoch's writes, cycling through the shapes that break a split: edges, ends, the boundary, none, all. */
function mutate(ram: Uint8Array, epoch: number, random: () => number): void {
  const pages = ram.length / PAGE_SIZE;
  const half = pages >>> 1;
  const bump = (page: number, at: number) => ram[page * PAGE_SIZE + at]++;
  const somePage = () => Math.floor(random() * pages);
  switch (epoch % 8) {
    case 0: // nothing, and a write of the value already there
      ram[5 * PAGE_SIZE + 7] = ram[5 * PAGE_SIZE + 7];
      break;
    case 1: // first and last page, at their outer bytes
      bump(0, 0);
      bump(pages - 1, PAGE_SIZE - 1);
      break;
    case 2: // both sides of the split
      bump(half - 1, PAGE_SIZE - 1);
      bump(half, 0);
      break;
    case 3: // only the helper's half
      for (let i = 0; i < 20; i++) bump(half + Math.floor(random() * (pages - half)), Math.floor(random() * PAGE_SIZE));
      break;
    case 4: // every page
      for (let page = 0; page < pages; page++) bump(page, Math.floor(random() * PAGE_SIZE));
      break;
    case 5: // page edges: last byte of one page and first of the next
      for (let i = 0; i < 30; i++) {
        const page = Math.floor(random() * (pages - 1));
        bump(page, PAGE_SIZE - 1);
        if (random() < 0.5) bump(page + 1, 0);
      }
      break;
    case 6: // a long run across the split
      ram.fill(epoch, (half - 40) * PAGE_SIZE + 100, (half + 40) * PAGE_SIZE - 100);
      break;
    default: // scattered single bytes
      for (let i = 0, n = Math.floor(random() * 300); i < n; i++) bump(somePage(), Math.floor(random() * PAGE_SIZE));
  }
}

/** 16 MiB compared word by word: a byte loop would make these tests slow. */
function assertShadow(log: DetectingDirtyLog, guest: GuestMemory, what: string): void {
  const words = (bytes: Uint8Array) => new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
  if (!wordsEqual(words(log.shadow()), words(guest.bytes()))) assert.unreachable(`${what}: the shadow differs from RAM`);
}

function wordsEqual(a: Uint32Array, b: Uint32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

test("split compare reports exactly what one thread and a naive compare report, epoch after epoch", () => {
  for (const flavor of WASM_FLAVORS) {
    const { memory, guest } = sharedGuest(BIG);
    const random = seededRandom(7);
    const ram = guest.bytes();
    for (let i = 0; i < ram.length; i++) ram[i] = i % 251; // no page alike, none zero
    const parallel = new DetectingDirtyLog(guest, { kernels: flavor });
    const single = new DetectingDirtyLog(guest, { kernels: flavor, threads: 1 });
    const prev = guest.bytes().slice();
    parallel.arm();
    single.arm();
    assert.equal(Array.from(parallel.collect()), all(BIG), `${flavor}: full first epoch`);
    assert.equal(Array.from(single.collect()), all(BIG));
    assert.is(parallel.parallel, false, "a full collect only copies");
    for (let epoch = 0; epoch < 16; epoch++) {
      mutate(guest.bytes(), epoch, random);
      const want = naiveDiff(guest.bytes(), prev);
      const what = `${flavor} epoch ${epoch}`;
      assert.equal(Array.from(parallel.collect()), want, `${what}: split`);
      assert.is(parallel.parallel, MULTICORE, `${what}: helper used`);
      assert.equal(Array.from(single.collect()), want, `${what}: one thread`);
      assert.is(single.parallel, false);
      assertShadow(parallel, guest, what);
      assertShadow(single, guest, `${what}, one thread`);
    }
    closeCompareHelper(memory);
  }
});

test("logs over one memory share its helper, also for shadows in memory grown after it started", () => {
  const { memory, guest } = sharedGuest(BIG);
  const first = new DetectingDirtyLog(guest, { kernels: "scalar" });
  first.arm();
  first.collect();
  first.collect();
  const helper = compareHelper(memory, "scalar");
  const before = memory.buffer.byteLength;
  const second = new DetectingDirtyLog(guest, { kernels: "scalar" }); // its shadow grows the memory
  assert.ok(memory.buffer.byteLength > before, "the second shadow is in new memory");
  second.arm();
  second.collect();
  guest.bytes()[(BIG - 1) * PAGE_SIZE] = 1;
  guest.bytes()[3] = 1;
  assert.equal(Array.from(second.collect()), [0, BIG - 1]);
  assert.is(second.parallel, MULTICORE);
  assert.equal(Array.from(first.collect()), [0, BIG - 1]);
  assert.is(compareHelper(memory, "scalar"), helper, "one helper per memory");
  assertShadow(second, guest, "second log");
  closeCompareHelper(memory);
});

test("no helper for small guests, threads: 1, unshared memory or the TypeScript kernels", () => {
  const small = sharedGuest(PARALLEL_MIN_PAGES - 1).guest;
  const big = sharedGuest(BIG).guest;
  const unshared = new GuestMemory(new WebAssembly.Memory({ initial: Math.ceil((BIG * PAGE_SIZE) / 65536) }), { size: BIG * PAGE_SIZE });
  const cases: [string, DetectingDirtyLog, GuestMemory][] = [
    ["small guest", new DetectingDirtyLog(small, { kernels: "simd" }), small],
    ["threads: 1", new DetectingDirtyLog(big, { kernels: "simd", threads: 1 }), big],
    ["unshared memory", new DetectingDirtyLog(unshared, { kernels: "simd" }), unshared],
    ["ts kernels", new DetectingDirtyLog(big, { kernels: "ts" }), big],
  ];
  for (const [what, log, guest] of cases) {
    log.arm();
    log.collect();
    guest.bytes()[guest.size - 1]++;
    assert.equal(Array.from(log.collect()), [guest.pageCount - 1], what);
    assert.is(log.parallel, false, what);
  }
  // The big log beside them does use one, so the cases above are not vacuous.
  const control = new DetectingDirtyLog(big, { kernels: "simd" });
  control.arm();
  control.collect();
  big.bytes()[0]++;
  assert.equal(Array.from(control.collect()), [0]);
  assert.is(control.parallel, MULTICORE);
  closeCompareHelper(big.wasmMemory!);
  assert.is(errorCode(() => new DetectingDirtyLog(big, { threads: 3 as 2 })), ErrorCode.BadArgument);
});

test("closing the helper between collects: the next collect starts a new one and stays exact", () => {
  const { memory, guest } = sharedGuest(BIG);
  const log = new DetectingDirtyLog(guest, { kernels: "simd" });
  log.arm();
  log.collect();
  const old = compareHelper(memory, "simd");
  closeCompareHelper(memory);
  closeCompareHelper(memory); // idempotent
  assert.is(old.alive, false);
  guest.bytes()[(BIG >>> 1) * PAGE_SIZE]++;
  assert.equal(Array.from(log.collect()), [BIG >>> 1]);
  assert.is(log.parallel, MULTICORE);
  const fresh = compareHelper(memory, "simd");
  assert.is.not(fresh, old);
  assert.is(fresh.alive, true);
  assertShadow(log, guest, "after reopening");
  closeCompareHelper(memory);
  closeCompareHelper(new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true })); // none: no-op
  assert.is(errorCode(() => compareHelper(new WebAssembly.Memory({ initial: 1 }), "simd")), ErrorCode.BadArgument, "unshared");
});

test("a helper that died between collects: the log goes on alone, exact, without an error", () => {
  const { memory, guest } = sharedGuest(BIG);
  const log = new DetectingDirtyLog(guest, { kernels: "simd" });
  log.arm();
  log.collect();
  compareHelper(memory, "simd").close(); // dead, but still the memory's helper: not restarted
  guest.bytes()[(BIG - 1) * PAGE_SIZE + 9]++;
  assert.equal(Array.from(log.collect()), [BIG - 1]);
  assert.is(log.parallel, false);
  assertShadow(log, guest, "alone");
  closeCompareHelper(memory);
});

for (const fault of ["error", "silent"] as const) {
  test(`a helper that fails a job (${fault}): E_FAILED, then a full collect, then exact alone`, () => {
    if (!MULTICORE) {
      console.log("  (skipped: one CPU, so no helper thread to fail)");
      return;
    }
    const { memory, guest } = sharedGuest(BIG);
    const random = seededRandom(11);
    const log = new DetectingDirtyLog(guest, { kernels: "simd" });
    const prev = guest.bytes().slice();
    log.arm();
    log.collect();
    mutate(guest.bytes(), 3, random);
    assert.ok(naiveDiff(guest.bytes(), prev).length > 0);
    const helper = compareHelper(memory, "simd");
    helper.injectFault(fault, 300);
    const started = performance.now();
    const epoch = log.epoch;
    assert.is(errorCode(() => log.collect()), ErrorCode.Failed);
    assert.is(log.epoch, epoch, "a failed collect delivers no epoch");
    if (fault === "silent") assert.ok(performance.now() - started >= 300, "waited for the bound");
    assert.is(helper.alive, false, "the failed helper is stopped");
    assert.is(log.state, DirtyLogState.Armed, "the shadow is distrusted");
    mutate(guest.bytes(), 5, random);
    assert.equal(Array.from(log.collect()), all(BIG), "the next collect is full");
    assertShadow(log, guest, "after the full collect");
    naiveDiff(guest.bytes(), prev);
    for (let epoch = 0; epoch < 8; epoch++) {
      mutate(guest.bytes(), epoch, random);
      assert.equal(Array.from(log.collect()), naiveDiff(guest.bytes(), prev), `epoch ${epoch}`);
      assert.is(log.parallel, false, "no helper after a failure");
      assertShadow(log, guest, `epoch ${epoch}`);
    }
    closeCompareHelper(memory);
  });
}

test.run();
