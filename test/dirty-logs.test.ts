import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode } from "../host/errors.ts";
import { errorCode } from "./support/errors.ts";
import { BitmapDirtyLog } from "../host/memory/bitmap-dirty-log.ts";
import { DetectingDirtyLog } from "../host/memory/detecting-dirty-log.ts";
import { DirtyLogState, nextDirtyLogState } from "../host/memory/dirty-log.ts";
import { GuestMemory, PAGE_SIZE } from "../host/memory/guest-memory.ts";
import { STAGING_PAGES } from "../host/memory/ram-access.ts";
import { seededRandom } from "../host/prng.ts";
import { FLAVORS, bytesEqual } from "./support/flavors.ts";

const test = suite("dirty logs, end to end");

const all = (n: number) => Array.from({ length: n }, (_, i) => i);
const sorted = (s: Set<number>) => [...s].sort((a, b) => a - b);

test("the state machine: idle -> armed -> tracking; collect while idle is E_NOT_ARMED", () => {
  assert.is(nextDirtyLogState(DirtyLogState.Idle, "arm"), DirtyLogState.Armed);
  assert.is(nextDirtyLogState(DirtyLogState.Armed, "collect"), DirtyLogState.Tracking);
  assert.is(nextDirtyLogState(DirtyLogState.Tracking, "collect"), DirtyLogState.Tracking);
  assert.is(nextDirtyLogState(DirtyLogState.Tracking, "arm"), DirtyLogState.Armed);
  assert.is(errorCode(() => nextDirtyLogState(DirtyLogState.Idle, "collect")), ErrorCode.NotArmed);
});

test("bitmap log: first epoch is every page; no write between arm and the first copy is lost", () => {
  for (const flavor of FLAVORS) {
    const log = new BitmapDirtyLog({ pageCount: 130 }, { kernels: flavor });
    assert.is(log.flavor, flavor);
    assert.is(errorCode(() => log.collect()), ErrorCode.NotArmed, "collect before arm");
    log.markRange(5 * PAGE_SIZE, 1); // before arm: covered by the full first epoch anyway
    log.arm();
    log.markRange(7 * PAGE_SIZE, 1); // between arm and the first collect
    assert.equal(Array.from(log.collect()), all(130), `${flavor}: first epoch`);
    // The caller now copies every page; a write during that copy must show up next epoch.
    log.markRange(100 * PAGE_SIZE + 4000, 200); // crosses into page 101
    assert.equal(Array.from(log.collect()), [100, 101], `${flavor}: write during the first copy`);
    assert.equal(Array.from(log.collect()), [], `${flavor}: then nothing`);
    assert.is(log.epoch, 3);
    log.arm();
    assert.equal(Array.from(log.collect()), all(130), `${flavor}: re-arming forces a full epoch`);
  }
});

test("bitmap log: markRange edges and bad ranges", () => {
  const log = new BitmapDirtyLog({ pageCount: 4 });
  log.arm();
  log.collect();
  log.markRange(4095, 2);
  log.markRange(3 * PAGE_SIZE, 0);
  log.markRange(4 * PAGE_SIZE - 1, 1);
  assert.is(log.count(), 3);
  assert.equal(Array.from(log.collect()), [0, 1, 3]);
  assert.is(errorCode(() => log.markRange(4 * PAGE_SIZE, 1)), ErrorCode.OutOfRange, "past the end");
  assert.is(errorCode(() => log.markRange(-1, 4)), ErrorCode.OutOfRange, "negative address");
  assert.is(errorCode(() => log.markRange(0.5, 4)), ErrorCode.OutOfRange, "fractional address");
  assert.is(errorCode(() => log.markRange(0, Number.NaN)), ErrorCode.OutOfRange, "NaN length");
  assert.is(errorCode(() => new BitmapDirtyLog({ pageCount: 0 })), ErrorCode.BadArgument, "no pages");
});

test("bitmap log: random writes match a model, for every flavor", () => {
  const pages = 1000; // not a multiple of 64
  for (const flavor of FLAVORS) {
    const random = seededRandom(31);
    const log = new BitmapDirtyLog({ pageCount: pages }, { kernels: flavor });
    log.arm();
    log.collect();
    for (let epoch = 0; epoch < 30; epoch++) {
      const model = new Set<number>();
      const writes = Math.floor(random() * 200);
      for (let i = 0; i < writes; i++) {
        const addr = Math.floor(random() * pages * PAGE_SIZE);
        const len = Math.min(pages * PAGE_SIZE - addr, Math.floor(random() * (random() < 0.1 ? 40_000 : 64)));
        log.markRange(addr, len);
        for (let p = Math.floor(addr / PAGE_SIZE); len > 0 && p * PAGE_SIZE < addr + len; p++) model.add(p);
      }
      assert.is(log.count(), model.size, `${flavor} epoch ${epoch}: count`);
      assert.equal(Array.from(log.collect()), sorted(model), `${flavor} epoch ${epoch}`);
    }
  }
});

/**
 * Drives a detecting log against a model: random writes to the guest; each collect must list
 * exactly the pages whose bytes differ from the last collect, and leave the shadow equal to RAM.
 * A replica built only from collected pages must equal the guest after every epoch.
 */
function detectingMatchesModel(guest: GuestMemory, log: DetectingDirtyLog, seed: number, label: string): void {
  const random = seededRandom(seed);
  const pages = guest.pageCount;
  log.arm();
  const replica = new Uint8Array(guest.size);
  const copy = (list: Uint32Array) => {
    const shadow = log.shadow();
    for (const p of list) replica.set(shadow.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE), p * PAGE_SIZE);
  };
  copy(log.collect());
  for (let epoch = 0; epoch < 12; epoch++) {
    const before = guest.bytes().slice();
    const writes = Math.floor(random() * 40);
    for (let i = 0; i < writes; i++) {
      const at = Math.floor(random() * guest.size);
      guest.bytes()[at] = random() < 0.2 ? guest.bytes()[at] : Math.floor(random() * 256); // some writes change nothing
    }
    const want: number[] = [];
    const now = guest.bytes();
    for (let p = 0; p < pages; p++) {
      if (!bytesEqual(before.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE), now.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE))) want.push(p);
    }
    const got = log.collect();
    assert.equal(Array.from(got), want, `${label} epoch ${epoch}`);
    assert.ok(bytesEqual(log.shadow(), guest.bytes()), `${label} epoch ${epoch}: shadow equals RAM`);
    copy(got);
    assert.ok(bytesEqual(replica, guest.bytes()), `${label} epoch ${epoch}: replica from collected pages equals the guest`);
  }
}

test("detecting log over an emulator's memory at a non-zero offset: in place, emulator bytes untouched", () => {
  for (const flavor of FLAVORS) {
    const memory = new WebAssembly.Memory({ initial: 8 });
    const offset = 3 * 65536 + 24; // guest RAM inside the emulator's memory, not page-aligned
    const pages = 70;
    const guest = new GuestMemory(memory, { offset, size: pages * PAGE_SIZE });
    const outside = () => {
      const u8 = new Uint8Array(memory.buffer);
      return [u8.slice(0, offset), u8.slice(offset + guest.size, 8 * 65536)];
    };
    new Uint8Array(memory.buffer).forEach((_, i, a) => (a[i] = (i * 31) & 0xff));
    const [head, tail] = outside();
    const log = new DetectingDirtyLog(guest, { kernels: flavor });
    assert.ok(log.inPlace, "scanned in place");
    assert.is(log.flavor, flavor);
    detectingMatchesModel(guest, log, 41, `in place ${flavor}`);
    const [head2, tail2] = outside();
    assert.ok(bytesEqual(head, head2) && bytesEqual(tail, tail2), `${flavor}: emulator bytes around the guest were never written`);
  }
});

test("detecting log over an ArrayBuffer is staged through a window, same answers", () => {
  const pages = STAGING_PAGES * 2 + 37; // several windows, the last one partial
  for (const flavor of FLAVORS) {
    const guest = new GuestMemory(new ArrayBuffer(pages * PAGE_SIZE + 4096), { offset: 4096 });
    const log = new DetectingDirtyLog(guest, { kernels: flavor });
    assert.not.ok(log.inPlace);
    detectingMatchesModel(guest, log, 42, `staged ${flavor}`);
  }
});

test("detecting log with a reserved scratch range and growth forbidden", () => {
  const pages = 16;
  const memory = new WebAssembly.Memory({ initial: 4 });
  const guest = new GuestMemory(memory, {
    offset: 0,
    size: pages * PAGE_SIZE,
    scratch: { reserved: { offset: 65536, size: 3 * 65536 }, grow: false },
  });
  const log = new DetectingDirtyLog(guest);
  assert.is(memory.buffer.byteLength, 4 * 65536, "the memory did not grow");
  detectingMatchesModel(guest, log, 43, "reserved scratch");
  const tooSmall = new GuestMemory(new WebAssembly.Memory({ initial: 1 }), {
    size: 8 * PAGE_SIZE,
    scratch: { reserved: { offset: 8 * PAGE_SIZE, size: 4 * PAGE_SIZE }, grow: false },
  });
  assert.is(errorCode(() => new DetectingDirtyLog(tooSmall)), ErrorCode.HeapFull, "no room for the shadow");
});

test("detecting log: the emulator growing its memory between collects changes nothing", () => {
  const memory = new WebAssembly.Memory({ initial: 2 });
  const guest = new GuestMemory(memory, { size: 8 * PAGE_SIZE });
  const log = new DetectingDirtyLog(guest);
  log.arm();
  log.collect();
  memory.grow(3);
  guest.bytes()[5 * PAGE_SIZE + 9] = 1;
  assert.equal(Array.from(log.collect()), [5]);
  assert.is(errorCode(() => new DetectingDirtyLog(guest).collect()), ErrorCode.NotArmed);
});

test.run();
