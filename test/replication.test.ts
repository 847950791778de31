import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode } from "../host/errors.ts";
import { ReferenceMachine, type ReferenceMachineOptions } from "../host/machine/reference-machine.ts";
import { FaultyTransport, type FaultOptions } from "../host/protocol/faulty-transport.ts";
import { memoryPair } from "../host/protocol/transport.ts";
import { replicate, type CheckpointStats, type ReleasedOutput, type ReplicateOptions } from "../host/replication/primary.ts";
import { standby } from "../host/replication/secondary.ts";
import { seededRandom } from "../host/prng.ts";
import { bytesEqual } from "./support/flavors.ts";
import { rejectionCode, until } from "./support/session.ts";

const test = suite("replication: checkpoints, failover, outputs exactly once");
const MACHINE: ReferenceMachineOptions = { memoryBytes: 1 << 20, dirtyPages: 6, diskBytes: 32 * 1024, diskEvery: 2, seed: 5, stepsPerTick: 3, tickMs: 1 };

/** The outside world: keeps each output seq once, and notices if a seq ever comes with other bytes. */
class World {
  readonly seen = new Map<number, string>();
  conflicts = 0;
  take(o: ReleasedOutput): void {
    const text = new TextDecoder().decode(o.data);
    const before = this.seen.get(o.seq);
    if (before !== undefined && before !== text) this.conflicts++;
    this.seen.set(o.seq, text);
  }
  /** True if seqs 1..n are all there, each "counter <seq>". */
  exact(): boolean {
    const seqs = [...this.seen.keys()].sort((a, b) => a - b);
    return seqs.every((seq, i) => seq === i + 1 && this.seen.get(seq) === `counter ${seq}\n`);
  }
}

interface Snapshot {
  ram: Uint8Array;
  disk: Uint8Array;
  devices: Uint8Array;
}

/** A primary and a standby over an in-memory connection with `faults` on the primary's side. */
function setup(faults: FaultOptions, senderTimeoutMs = 2000, extra: Partial<ReplicateOptions> = {}) {
  const [a, b] = memoryPair();
  const wire = new FaultyTransport(a, faults);
  const primary = new ReferenceMachine(MACHINE);
  const secondary = new ReferenceMachine(MACHINE);
  const world = new World();
  const snapshots = new Map<number, Snapshot>();
  const committed: number[] = [];
  const stats: CheckpointStats[] = [];
  const early: number[] = []; // seqs the primary released past its last acknowledged checkpoint
  let committedSeq = 0;
  const controller = new AbortController();
  const rep = replicate(primary, wire, {
    intervalMs: 2,
    // A killed primary releases nothing more: only what it released while its connection lived counts.
    release: (o) => {
      if (wire.closed) return;
      if (o.seq > committedSeq) early.push(o.seq);
      world.take(o);
    },
    onSuspended: (checkpoint) => {
      snapshots.set(checkpoint, { ram: primary.memory[0].bytes().slice(), disk: primary.disks[0].read(0, primary.disks[0].size), devices: primary.saveDevices() });
      snapshots.delete(checkpoint - 8);
    },
    onCommitted: (s) => {
      committed.push(s.checkpoint);
      stats.push(s);
      committedSeq = s.lastSeq;
    },
    signal: controller.signal,
    sender: { responseTimeoutMs: senderTimeoutMs },
    ...extra,
  });
  const sb = standby(secondary, b, { heartbeatTimeoutMs: 150, release: (o) => world.take(o), resume: false });
  return { primary, secondary, world, snapshots, committed, stats, early, rep, sb, controller, wire };
}

function assertHolds(s: ReturnType<typeof setup>, checkpoint: number, label: string): void {
  const snap = s.snapshots.get(checkpoint);
  assert.ok(snap, `${label}: a snapshot of checkpoint ${checkpoint}`);
  assert.ok(bytesEqual(s.secondary.memory[0].bytes(), snap!.ram), `${label}: RAM equals checkpoint ${checkpoint}`);
  assert.ok(bytesEqual(s.secondary.disks[0].read(0, s.secondary.disks[0].size), snap!.disk), `${label}: disk equals checkpoint ${checkpoint}`);
  assert.equal(s.secondary.saveDevices(), snap!.devices, `${label}: device state equals checkpoint ${checkpoint}`);
}

test("the primary dies at random moments: the standby holds a committed checkpoint and outputs stay exact", async () => {
  const random = seededRandom(121);
  const trials = Number(globalThis.process?.env?.TANDEM_KILLS ?? 12);
  for (let trial = 0; trial < trials; trial++) {
    // Mostly past protection (~70 KB here: the first checkpoint's zero pages, the 32 KiB disk copy, a checkpoint), sometimes before.
    const cutAfter = trial === 0 ? 10_000 : 40_000 + Math.floor(random() * 400_000);
    const s = setup({ cutAfter, maxChunk: 8192, seed: trial });
    const outcome = await s.sb.promise.then((r) => r, (e: Error) => e);
    assert.is(await rejectionCode(s.rep.promise), ErrorCode.PeerLost, `trial ${trial}: the primary sees its standby gone`);
    s.primary.pause(); // it was killed: it runs no more
    if (outcome instanceof Error) {
      // Before the disk copy is complete (and a checkpoint after it acknowledged) the standby's
      // disk is not the guest's: it must not take over, and the primary never said it could.
      assert.is((outcome as { code?: string }).code, ErrorCode.PeerLost, `trial ${trial}: ${outcome.message}`);
      assert.ok(s.stats.every((x) => !x.protected), `trial ${trial}: a protected checkpoint was acknowledged, yet no takeover: ${outcome.message}`);
      continue;
    }
    const result = outcome;
    assert.is(result.outcome, "takeover");
    const lastAck = s.committed[s.committed.length - 1] ?? 0;
    assert.ok(result.checkpoint === lastAck || result.checkpoint === lastAck + 1,
      `trial ${trial}: holds checkpoint ${result.checkpoint}, last acknowledged ${lastAck}`);
    assertHolds(s, result.checkpoint, `trial ${trial}`);
    s.secondary.resume();
    const before = s.secondary.counter;
    await until(() => s.secondary.counter >= before + 20);
    s.secondary.pause();
    assert.equal(s.early, [], `trial ${trial}: the primary released no output before its checkpoint was acknowledged`);
    assert.is(s.world.conflicts, 0, `trial ${trial}: no seq came twice with different bytes`);
    assert.ok(s.world.exact(), `trial ${trial}: outputs 1..${s.world.seen.size} exactly once, in order, no gap`);
    assert.is(s.secondary.diskErrors, 0, `trial ${trial}: the guest never saw a lost disk write`);
  }
});

test("compression: checkpoints carry page deltas, and a killed primary's standby still holds one exactly", async () => {
  const s = setup({ cutAfter: 120_000, maxChunk: 8192 }, 2000, { compression: true });
  const result = await s.sb.promise;
  await rejectionCode(s.rep.promise);
  s.primary.pause();
  assert.ok(s.stats.some((c) => c.deltaPages > 0), "some pages went as deltas");
  const later = s.stats.filter((c) => c.checkpoint > 1);
  assert.ok(later.every((c) => c.bytes < 16 * 4096 + 4096), "a few changed words per page make small checkpoints");
  assert.is(result.outcome, "takeover");
  assertHolds(s, result.checkpoint, "compressed");
  s.secondary.resume();
  const before = s.secondary.counter;
  await until(() => s.secondary.counter >= before + 10);
  s.secondary.pause();
  assert.ok(s.world.exact());
});

test("held output is bounded: past the limit the guest waits for acknowledgements", async () => {
  const limit = 120;
  const s = setup({ delayMs: 3 }, 2000, { maxHeldOutputBytes: limit });
  // And the guest is let go again: its output runs to many times the limit (each acknowledgement
  // takes what it released off the count; once it took nothing off, and the guest waited for good).
  await until(() => s.committed.length >= 15 && s.world.seen.size >= 60, 20_000);
  s.controller.abort();
  await rejectionCode(s.rep.promise);
  await s.sb.promise;
  s.primary.pause();
  const peak = Math.max(...s.stats.map((c) => c.heldOutputBytes));
  assert.ok(peak <= limit + 20, `held ${peak} bytes, limit ${limit} (one output may cross it)`);
  assert.ok(s.world.exact());
});

test("cancelling at random moments: the primary runs on, the standby stands down consistent", async () => {
  const random = seededRandom(131);
  for (let trial = 0; trial < 8; trial++) {
    const s = setup({});
    await new Promise((r) => setTimeout(r, Math.floor(random() * 60)));
    s.controller.abort();
    assert.is(await rejectionCode(s.rep.promise), ErrorCode.Aborted, `trial ${trial}`);
    const outcome = await s.sb.promise.then((r) => r, (e: Error) => e);
    if (outcome instanceof Error) {
      assert.is((outcome as { code?: string }).code, ErrorCode.PeerLost, `trial ${trial}: cancelled before any checkpoint`);
      assert.equal(s.committed, []);
    } else {
      assert.is(outcome.outcome, "stopped", `trial ${trial}`);
      assert.not.ok(s.secondary.running, `trial ${trial}: the standby did not take over`);
      if (outcome.checkpoint > 0) assertHolds(s, outcome.checkpoint, `trial ${trial}`);
    }
    const at = s.primary.counter;
    await until(() => s.primary.counter > at);
    s.primary.pause();
  }
});

test("a primary that goes silent is taken over after the heartbeat timeout", async () => {
  // The primary waits far longer for its ACK than the standby waits for bytes, so the standby's
  // heartbeat (150 ms) decides, not the primary hanging up.
  const s = setup({ silentAfter: 200_000 }, 10_000);
  const result = await s.sb.promise;
  assert.is(result.outcome, "takeover");
  assert.is(result.reason, "heartbeat");
  assert.ok(result.failoverMs! < 50, `failover took ${result.failoverMs} ms after detection`);
  s.wire.close(); // hang the silent primary up
  await rejectionCode(s.rep.promise);
  s.primary.pause();
  assertHolds(s, result.checkpoint, "silent primary");
});

test("cancelling replication stands the standby down; the primary keeps running", async () => {
  const s = setup({});
  await until(() => s.committed.length >= 5);
  s.controller.abort();
  assert.is(await rejectionCode(s.rep.promise), ErrorCode.Aborted);
  const result = await s.sb.promise;
  assert.is(result.outcome, "stopped");
  assert.not.ok(s.secondary.running, "the standby did not take over");
  const at = s.primary.counter;
  await until(() => s.primary.counter > at + 5);
  s.primary.pause();
});

test("a standby fenced at a newer generation refuses an old primary", async () => {
  const [a, b] = memoryPair();
  const primary = new ReferenceMachine(MACHINE);
  const secondary = new ReferenceMachine(MACHINE);
  const rep = replicate(primary, a, { intervalMs: 2, generation: 1 });
  const sb = standby(secondary, b, { minGeneration: 2, heartbeatTimeoutMs: 200 });
  assert.is(await rejectionCode(rep.promise), ErrorCode.Failed);
  primary.pause();
  assert.is(await rejectionCode(sb.promise), ErrorCode.PeerLost, "nothing to take over: no checkpoint was applied");
  assert.not.ok(secondary.running);
});

test.run();
