import { readFileSync } from "node:fs";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { V86Machine, type V86MachineOptions } from "../../../host/emulators/v86/v86-machine.ts";
import { checkMarkMapLayout } from "../../../host/emulators/v86/v86-tracking.ts";
import { MARK_MAP_BYTES } from "../../../host/emulators/v86/store-marks.ts";
import { ErrorCode, TandemError } from "../../../host/errors.ts";
import { MemoryDisk } from "../../../host/machine/memory-disk.ts";
import { PAGE_SIZE } from "../../../host/memory/guest-memory.ts";
import { VerifyingDirtyLog } from "../../../host/memory/verifying-dirty-log.ts";

const test = suite("v86 write tracking: v86 marks every page it writes, checked against a compare of all of RAM");

const jitGuest = () => new Uint8Array(readFileSync(new URL("../../support/jit-guest/jit-guest.bin", import.meta.url)));
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Runs `epochs` short epochs with the machine's verifying log; returns its counts. Any missed page throws. */
async function verifyEpochs(options: V86MachineOptions, epochs: number, epochMs: number, progress: (m: V86Machine) => number): Promise<VerifyingDirtyLog["counts"] & { progress: number }> {
  const machine = await V86Machine.create({ ...options, tracking: "verify" });
  try {
    assert.is(machine.tracking.mode, "verify");
    const log = machine.dirtyLogs[0];
    assert.ok(log instanceof VerifyingDirtyLog);
    log.arm();
    assert.is(log.collect().length, machine.memory[0].pageCount, "the first epoch is every page");
    for (let i = 0; i < epochs; i++) {
      machine.resume();
      await sleep(epochMs);
      machine.pause();
      log.collect();
    }
    return { ...log.counts, progress: progress(machine) };
  } finally {
    await machine.destroy();
  }
}

test("the built-in guest (RAM writes, ATA PIO, timer interrupts): every changed page in 40 epochs was marked", async () => {
  const counts = await verifyEpochs({ memoryBytes: 16 << 20, cmdline: "hz=200 dirty=24", disk: new MemoryDisk(256 * 1024) }, 40, 25, () => 0);
  assert.ok(counts.checked === 40 && counts.changed > 40, `pages changed: ${JSON.stringify(counts)}`);
  assert.ok(counts.tracked >= counts.changed);
});

test("a guest whose loop v86's JIT compiles: every page its compiled code changed was marked", async () => {
  const machine = { multiboot: jitGuest(), memoryBytes: 8 << 20, disk: null } satisfies V86MachineOptions;
  const counts = await verifyEpochs(machine, 30, 30, (m) => new DataView(m.memory[0].bytes().slice(0x500000, 0x500004).buffer).getUint32(0, true));
  assert.ok(counts.progress > 100, `the guest ran ${counts.progress} passes`);
  assert.ok(counts.changed >= 30, `pages changed: ${JSON.stringify(counts)}`);
  // The loop rewrites 4 pages and a counter: nothing much more is marked than changed.
  assert.ok(counts.tracked <= counts.changed * 2 + 30, `over-marked: ${JSON.stringify(counts)}`);
});

test("the verifier fails loudly, naming the page, on a change no writer marked", async () => {
  const machine = await V86Machine.create({ memoryBytes: 8 << 20, disk: null, cmdline: "hz=50 dirty=1", tracking: "verify" });
  try {
    const log = machine.dirtyLogs[0]!;
    log.arm();
    log.collect();
    // Behind v86's back: a write no instruction of v86 made.
    machine.memory[0].bytes()[0x345678] ^= 0xff;
    const error = (() => {
      try {
        log.collect();
      } catch (caught) {
        return caught;
      }
    })();
    assert.ok(error instanceof TandemError && error.code === ErrorCode.TrackingMissed, String(error));
    assert.match((error as Error).message, /page 837 \(guest-physical 0x345000; last write: not marked since the log was armed\)/);
    assert.is(log.collect().length, machine.memory[0].pageCount, "after a miss the log re-arms: the next epoch is every page");
  } finally {
    await machine.destroy();
  }
});

test("marks mode: a log v86 marks; its JavaScript writers (write_memory, as disk DMA) mark too; off: no log", async () => {
  const machine = await V86Machine.create({ memoryBytes: 8 << 20, disk: null, cmdline: "hz=1 dirty=0" });
  try {
    assert.equal(machine.tracking, { mode: "marks" });
    const log = machine.dirtyLogs[0]!;
    log.arm();
    log.collect();
    machine.emulator.write_memory([1, 2, 3], 0x201ffe);
    assert.equal([...log.collect()], [0x201, 0x202], "write_blob across a page boundary marks both pages");
    assert.equal([...log.collect()], [], "and the marks were cleared");
  } finally {
    await machine.destroy();
  }
  const off = await V86Machine.create({ memoryBytes: 8 << 20, disk: null, tracking: "off" });
  try {
    assert.equal(off.dirtyLogs, [undefined]);
    assert.equal(off.tracking, { mode: "off" });
  } finally {
    await off.destroy();
  }
  const bad = await V86Machine.create({ tracking: "sometimes" as "off" }).then(() => undefined, (error: unknown) => error);
  assert.ok(bad instanceof TandemError && bad.code === ErrorCode.BadArgument);
});

test("the layout check: RAM must start on a page, past the mark map", () => {
  const memory = new WebAssembly.Memory({ initial: 1 });
  assert.is(checkMarkMapLayout({ memory, offset: 0x200000, size: 4096 }, 0x100000), undefined);
  assert.match(checkMarkMapLayout({ memory, offset: 0x200001, size: 4096 }, 0x100000)!, /page boundary/);
  assert.match(checkMarkMapLayout({ memory, offset: 0x100000 + MARK_MAP_BYTES - PAGE_SIZE, size: 4096 }, 0x100000)!, /below the end of the mark map/);
});

test.run();
