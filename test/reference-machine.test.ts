import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode } from "../host/errors.ts";
import { ReferenceMachine, type ReferenceMachineOptions } from "../host/machine/reference-machine.ts";
import { PAGE_SIZE } from "../host/memory/guest-memory.ts";
import { errorCode } from "./support/errors.ts";
import { bytesEqual } from "./support/flavors.ts";
import { until } from "./support/session.ts";

const test = suite("the reference machine");
const OPTIONS: ReferenceMachineOptions = { memoryBytes: 4 << 20, dirtyPages: 8, diskBytes: 64 * 1024, diskEvery: 3, seed: 7 };

function recorder(machine: ReferenceMachine): { out: string[]; writes: string[] } {
  const out: string[] = [];
  const writes: string[] = [];
  machine.onOutput((o) => out.push(`${o.channel}:${new TextDecoder().decode(o.data)}`));
  machine.onDiskWrite((disk, offset, data) => writes.push(`${disk}@${offset}:${data.length}`));
  return { out, writes };
}

test("deterministic: same options, same steps, same RAM, disk, outputs and device state", () => {
  const a = new ReferenceMachine(OPTIONS);
  const b = new ReferenceMachine(OPTIONS);
  const ra = recorder(a);
  const rb = recorder(b);
  a.step(50);
  b.step(50);
  assert.ok(bytesEqual(a.memory[0].bytes(), b.memory[0].bytes()));
  assert.equal(ra, rb);
  assert.equal(a.saveDevices(), b.saveDevices());
  assert.is(ra.out[49], "serial0:counter 50\n");
  assert.is(ra.writes.length, 16, "a disk write every 3 steps");
  assert.is(a.diskErrors, 0);
});

test("every RAM write is marked: the dirty log lists exactly the pages that changed", () => {
  const m = new ReferenceMachine(OPTIONS);
  const log = m.dirtyLogs[0];
  log.arm();
  log.collect();
  for (let epoch = 0; epoch < 5; epoch++) {
    const before = m.memory[0].bytes().slice();
    m.step(4);
    const now = m.memory[0].bytes();
    const changed: number[] = [];
    for (let p = 0; p < m.memory[0].pageCount; p++) {
      if (!bytesEqual(before.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE), now.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE))) changed.push(p);
    }
    assert.equal(Array.from(log.collect()), changed, `epoch ${epoch}`);
    assert.ok(changed.length > 0 && changed.length <= 4 * 8);
  }
});

test("a copy of RAM, disk and device state continues exactly as the original (replication in miniature)", () => {
  const original = new ReferenceMachine(OPTIONS);
  original.step(30);
  const copy = new ReferenceMachine(OPTIONS);
  copy.memory[0].bytes().set(original.memory[0].bytes());
  copy.disks[0].write(0, original.disks[0].read(0, original.disks[0].size));
  copy.restoreDevices(original.saveDevices());
  const ro = recorder(original);
  const rc = recorder(copy);
  original.step(40);
  copy.step(40);
  assert.equal(rc.out, ro.out, "the counter continues with no gap and no repeat");
  assert.is(rc.out[0], "serial0:counter 31\n");
  assert.ok(bytesEqual(copy.memory[0].bytes(), original.memory[0].bytes()));
  assert.is(copy.diskErrors, 0);
});

test("a disk that lost a write shows up as a guest-visible disk error", () => {
  const m = new ReferenceMachine(OPTIONS);
  m.step(12); // sectors 1..4 written (rounds 1..4)
  m.disks[0].write(4 * 512, new Uint8Array(512)); // the last write vanishes
  m.step(3); // round 5 re-reads sector 4
  assert.is(m.diskErrors, 1);
});

test("runs on its own while resumed, stops when paused; bad device state is refused", async () => {
  const m = new ReferenceMachine({ ...OPTIONS, stepsPerTick: 5, tickMs: 1 });
  const { out } = recorder(m);
  m.resume();
  assert.ok(m.running);
  await until(() => m.counter >= 20);
  m.pause();
  const at = m.counter;
  await new Promise((r) => setTimeout(r, 20));
  assert.is(m.counter, at, "nothing happens while paused");
  assert.is(out.length, at);
  assert.is(errorCode(() => m.restoreDevices(new Uint8Array(24))), ErrorCode.BadArgument);
  assert.is(errorCode(() => new ReferenceMachine({ memoryBytes: 1000 })), ErrorCode.BadArgument);
});

test.run();
