import { readFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { CounterLog } from "../host/cli/guests.ts";
import { V86Machine, type V86MachineOptions } from "../host/emulators/v86/v86-machine.ts";
import { V86_VERSION, checkV86Internals } from "../host/emulators/v86/v86-internals.ts";
import { ErrorCode } from "../host/errors.ts";
import { MemoryDisk } from "../host/machine/memory-disk.ts";
import { seededRandom } from "../host/prng.ts";
import { FaultyTransport } from "../host/protocol/faulty-transport.ts";
import { memoryPair } from "../host/protocol/transport.ts";
import { replicate, type ReleasedOutput } from "../host/replication/primary.ts";
import { restore, save } from "../host/replication/save-restore.ts";
import { standby } from "../host/replication/secondary.ts";
import { errorCode } from "./support/errors.ts";
import { bytesEqual } from "./support/flavors.ts";
import { rejectionCode, until } from "./support/session.ts";

const test = suite("v86 adapter: the built-in guest in a real emulator, checkpointed, restored and replicated");
const dir = mkdtempSync(join(tmpdir(), "tandem-v86-"));
const options = (): V86MachineOptions => ({ memoryBytes: 8 << 20, cmdline: "hz=100 dirty=8", disk: new MemoryDisk(256 * 1024) });

/** Output lines the machine printed, as text. */
function listen(machine: V86Machine): CounterLog {
  const log = new CounterLog();
  machine.onOutput((o) => log.see(new TextDecoder().decode(o.data)));
  return log;
}

test("v86 is the pinned version and has every internal the adapter uses; a changed build is refused by name", async () => {
  const installed = JSON.parse(readFileSync(new URL("../node_modules/v86/package.json", import.meta.url), "utf8")) as { version: string };
  assert.ok(installed.version.startsWith(`${V86_VERSION}+`) || installed.version === V86_VERSION,
    `installed v86 ${installed.version}; the adapter was written for ${V86_VERSION} (see host/emulators/v86/v86-internals.ts)`);
  const machine = await V86Machine.create(options());
  try {
    assert.ok(checkV86Internals(machine.emulator));
    const changed = { v86: { stop() {}, run() {}, save_state() {}, restore_state() {}, running: false, cpu: { wasm_memory: {} } } };
    const error = errorCode(() => checkV86Internals(changed));
    assert.is(error, ErrorCode.EmulatorChanged);
    assert.throws(() => checkV86Internals(changed), /cpu\.wasm_memory is not a WebAssembly\.Memory/);
  } finally {
    await machine.destroy();
  }
});

test("RAM is v86's own memory, scanned in place: a guest write shows in the machine's region", async () => {
  const machine = await V86Machine.create(options());
  try {
    const region = machine.memory[0];
    assert.ok(region.wasmMemory, "the region is a WebAssembly.Memory");
    assert.is(region.size, 8 << 20);
    machine.emulator.write_memory([0xa5, 0x5a], 0x300000);
    assert.equal([...region.bytes().subarray(0x300000, 0x300002)], [0xa5, 0x5a]);
  } finally {
    await machine.destroy();
  }
});

test("save, restore into another instance: identical RAM and disk, and the guest counts on from where it was saved (unshared memory to shared)", async () => {
  const a = await V86Machine.create({ ...options(), sharedMemory: false });
  const b = await V86Machine.create({ ...options(), sharedMemory: true });
  try {
    assert.not.ok(a.memory[0].wasmMemory!.buffer instanceof SharedArrayBuffer, "sharedMemory: false keeps v86's own memory");
    assert.ok(b.memory[0].wasmMemory!.buffer instanceof SharedArrayBuffer, "sharedMemory: true runs v86 on a shared memory");
    const before = listen(a);
    a.resume();
    await until(() => before.last >= 20, 15_000);
    const file = join(dir, "saved");
    await save(a, file, { stop: true }).promise;
    const savedAt = before.last;
    const after = listen(b);
    await restore(b, file, { resume: false }).promise;
    assert.ok(bytesEqual(b.memory[0].bytes(), a.memory[0].bytes()), "RAM equal byte for byte");
    assert.ok(bytesEqual(b.disks[0].read(0, b.disks[0].size), a.disks[0].read(0, a.disks[0].size)), "disk equal byte for byte");
    b.resume();
    await until(() => after.last >= savedAt + 20, 15_000);
    b.pause();
    assert.is(after.counters[0], savedAt + 1, "the first counter after the restore follows the last before the save");
    assert.ok(after.counters.every((c, i) => i === 0 || c === after.counters[i - 1] + 1), "no gap, no repeat");
    assert.is(after.diskErrors, 0, "sectors written before the save read back intact after the restore");
  } finally {
    await a.destroy();
    await b.destroy();
  }
});

test("the primary dies at random moments: the standby holds a committed checkpoint byte for byte, and the counter goes on exactly", async () => {
  const random = seededRandom(86);
  const trials = Number(globalThis.process?.env?.TANDEM_KILLS ?? 3);
  for (let trial = 0; trial < trials; trial++) {
    const primary = await V86Machine.create(options());
    const secondary = await V86Machine.create(options());
    try {
      // The first checkpoints carry the device state and the background copy of the disk (about 1.8 MB
      // in all); later ones are small. A cut in that span leaves a standby that must not take over.
      const cutAfter = 1_000_000 + Math.floor(random() * 3_000_000);
      const [a, b] = memoryPair();
      const wire = new FaultyTransport(a, { cutAfter, maxChunk: 65536, seed: trial });
      const world = new Map<number, string>();
      const take = (o: ReleasedOutput) => {
        const text = new TextDecoder().decode(o.data);
        assert.ok(!world.has(o.seq) || world.get(o.seq) === text, `trial ${trial}: seq ${o.seq} twice with different bytes`);
        world.set(o.seq, text);
      };
      const snapshots = new Map<number, { ram: Uint8Array; disk: Uint8Array }>();
      const committed: number[] = []; // those acknowledged once the standby held the disk whole
      const rep = replicate(primary, wire, {
        intervalMs: 10,
        release: (o) => {
          if (!wire.closed) take(o);
        },
        onSuspended: (checkpoint) => {
          snapshots.set(checkpoint, { ram: primary.memory[0].bytes().slice(), disk: primary.disks[0].read(0, primary.disks[0].size) });
          snapshots.delete(checkpoint - 4);
        },
        onCommitted: (s) => {
          if (s.protected) committed.push(s.checkpoint);
        },
      });
      const sb = standby(secondary, b, { heartbeatTimeoutMs: 300, release: take, resume: false });
      const outcome = await sb.promise.then((r) => r, (e: Error) => e);
      assert.is(await rejectionCode(rep.promise), ErrorCode.PeerLost);
      primary.pause(); // it was killed: it runs no more
      if (outcome instanceof Error) {
        assert.is((outcome as { code?: string }).code, ErrorCode.PeerLost, `trial ${trial}: ${outcome.message}`);
        assert.equal(committed, [], `trial ${trial}: cut before the pair was protected, so nothing to take over`);
        continue;
      }
      const result = outcome;
      assert.is(result.outcome, "takeover", `trial ${trial}`);
      const lastAck = committed.at(-1) ?? 0;
      assert.ok(result.checkpoint === lastAck || result.checkpoint === lastAck + 1, `trial ${trial}: holds ${result.checkpoint}, last acknowledged ${lastAck}`);
      const snap = snapshots.get(result.checkpoint)!;
      assert.ok(bytesEqual(secondary.memory[0].bytes(), snap.ram), `trial ${trial}: RAM equals checkpoint ${result.checkpoint}`);
      assert.ok(bytesEqual(secondary.disks[0].read(0, secondary.disks[0].size), snap.disk), `trial ${trial}: disk equals it`);
      const releasedBefore = world.size;
      secondary.resume();
      await until(() => world.size >= releasedBefore + 21, 15_000); // 20 counters past the banner line, at the least
      secondary.pause();
      const seqs = [...world.keys()].sort((x, y) => x - y);
      assert.ok(seqs.every((seq, i) => seq === i + 1), `trial ${trial}: seqs 1..${seqs.length}`);
      const log = new CounterLog();
      for (const seq of seqs) log.see(world.get(seq)!);
      assert.ok(log.counters.length >= 20, `trial ${trial}: ${log.counters.length} counters: ${JSON.stringify(seqs.map((q) => world.get(q)).slice(0, 8))}`);
      assert.ok(log.counters.every((c, i) => c === i + 1), `trial ${trial}: counters 1..${log.counters.length} once each, across the takeover`);
      assert.is(log.diskErrors, 0, `trial ${trial}: the guest never read back a lost write`);
    } finally {
      await primary.destroy();
      await secondary.destroy();
    }
  }
});

test.after(() => rmSync(dir, { recursive: true, force: true }));

test.run();
