import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode } from "../host/errors.ts";
import { ReferenceMachine, type ReferenceMachineOptions } from "../host/machine/reference-machine.ts";
import { FaultyTransport } from "../host/protocol/faulty-transport.ts";
import { memoryPair, type Transport } from "../host/protocol/transport.ts";
import { migrate } from "../host/replication/migrate.ts";
import type { ReleasedOutput } from "../host/replication/primary.ts";
import { standby } from "../host/replication/secondary.ts";
import { bytesEqual } from "./support/flavors.ts";
import { rejectionCode, until } from "./support/session.ts";

const test = suite("live migration (pre-copy)");

/**
 * A connection with a little latency: an in-memory pair finishes a round in microtasks, so the
 * guest's timers (its steps) would never run between rounds, unlike over a socket.
 */
function slowPair(): [Transport, Transport] {
  const [a, b] = memoryPair();
  return [new FaultyTransport(a, { delayMs: 2 }), b];
}
const MACHINE: ReferenceMachineOptions = { memoryBytes: 4 << 20, dirtyPages: 2, diskBytes: 32 * 1024, diskEvery: 2, seed: 9, stepsPerTick: 1, tickMs: 1 };

function world() {
  const seen = new Map<number, string>();
  let conflicts = 0;
  return {
    take: (o: ReleasedOutput) => {
      const text = new TextDecoder().decode(o.data);
      if (seen.has(o.seq) && seen.get(o.seq) !== text) conflicts++;
      seen.set(o.seq, text);
    },
    exact: () => conflicts === 0 && [...seen.keys()].sort((a, b) => a - b).every((seq, i) => seq === i + 1 && seen.get(seq) === `counter ${seq}\n`),
    size: () => seen.size,
  };
}

test("a running machine migrates: converges, hands over, and the destination continues exactly", async () => {
  const [a, b] = slowPair();
  const source = new ReferenceMachine(MACHINE);
  const dest = new ReferenceMachine(MACHINE);
  const w = world();
  let at: { ram: Uint8Array; disk: Uint8Array; devices: Uint8Array } | undefined;
  const sb = standby(dest, b, { release: w.take, resume: false });
  source.resume();
  const mig = migrate(source, a, {
    release: w.take,
    onStopped: () => (at = { ram: source.memory[0].bytes().slice(), disk: source.disks[0].read(0, source.disks[0].size), devices: source.saveDevices() }),
  });
  const result = await mig.promise;
  const taken = await sb.promise;
  assert.ok(result.converged, JSON.stringify(result));
  assert.ok(result.iterations >= 2);
  assert.ok(result.downtimeMs < 1000, `downtime ${result.downtimeMs} ms`);
  assert.not.ok(source.running, "the source stays stopped for good");
  assert.equal([taken.outcome, taken.reason], ["takeover", "handover"]);
  assert.ok(bytesEqual(dest.memory[0].bytes(), at!.ram), "RAM as at the stop");
  assert.ok(bytesEqual(dest.disks[0].read(0, dest.disks[0].size), at!.disk), "disk as at the stop");
  assert.equal(dest.saveDevices(), at!.devices, "devices as at the stop");
  dest.resume();
  const from = dest.counter;
  await until(() => dest.counter >= from + 20);
  dest.pause();
  assert.ok(w.exact(), `outputs 1..${w.size()} exactly once across the handover`);
  assert.is(dest.diskErrors, 0);
});

test("a machine that dirties faster than it can be copied: strict fails and runs on; otherwise it stops at the limit", async () => {
  const busy = { ...MACHINE, dirtyPages: 200, stepsPerTick: 20 };
  {
    const [a, b] = slowPair();
    const source = new ReferenceMachine(busy);
    const sb = standby(new ReferenceMachine(busy), b, {});
    source.resume();
    const code = await rejectionCode(migrate(source, a, { maxDowntimeMs: 0.001, maxIterations: 3, strict: true }).promise);
    assert.is(code, ErrorCode.Failed);
    assert.ok(source.running, "the machine runs on where it was");
    assert.is((await sb.promise).outcome, "stopped", "the destination stood down");
    source.pause();
  }
  {
    const [a, b] = slowPair();
    const source = new ReferenceMachine(busy);
    const dest = new ReferenceMachine(busy);
    const sb = standby(dest, b, { resume: false });
    source.resume();
    const result = await migrate(source, a, { maxDowntimeMs: 0.001, maxIterations: 3 }).promise;
    assert.equal([result.converged, result.iterations], [false, 3]);
    assert.is((await sb.promise).reason, "handover");
  }
});

test("cancelling mid-migration: the machine runs on here and the destination stands down", async () => {
  const [a, b] = slowPair();
  const busy = { ...MACHINE, dirtyPages: 200, stepsPerTick: 20 };
  const source = new ReferenceMachine(busy);
  const sb = standby(new ReferenceMachine(busy), b, {});
  source.resume();
  const controller = new AbortController();
  const mig = migrate(source, a, { maxDowntimeMs: 0.001, maxIterations: 1000, signal: controller.signal });
  await until(() => mig.progress.iterations >= 2);
  controller.abort();
  assert.is(await rejectionCode(mig.promise), ErrorCode.Aborted);
  assert.ok(source.running);
  assert.is((await sb.promise).outcome, "stopped");
  source.pause();
});

test.run();
