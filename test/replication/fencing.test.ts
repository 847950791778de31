import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode } from "../../host/errors.ts";
import { ReferenceMachine, type ReferenceMachineOptions } from "../../host/machine/reference-machine.ts";
import { memoryPair } from "../../host/protocol/transport.ts";
import { replicate } from "../../host/replication/primary.ts";
import { ReleaseGate } from "../../host/replication/release-gate.ts";
import { standby } from "../../host/replication/secondary.ts";
import { rejectionCode, until } from "../support/session.ts";

const test = suite("replication: a primary that no longer owns the guest is fenced");
const MACHINE: ReferenceMachineOptions = { memoryBytes: 1 << 18, dirtyPages: 4, diskBytes: 8 * 1024, diskEvery: 3, seed: 9, stepsPerTick: 2, tickMs: 1 };

test("standby lost and the witness says no: guest paused, nothing held is released, the standby is not stood down", async () => {
  const [a, b] = memoryPair();
  const primary = new ReferenceMachine(MACHINE);
  const released: number[] = [];
  let committedSeq = 0;
  let asked = 0;
  const rep = replicate(primary, a, {
    intervalMs: 3,
    release: (o) => released.push(o.seq),
    onCommitted: (s) => (committedSeq = s.lastSeq),
    confirmOwnership: async () => (asked++, false),
  });
  const sb = standby(new ReferenceMachine(MACHINE), b, { heartbeatTimeoutMs: 10_000, resume: false });
  await until(() => committedSeq >= 5);
  a.fail(new Error("link cut"));
  assert.is(await rejectionCode(rep.promise), ErrorCode.Fenced);
  assert.is(asked, 1);
  assert.not.ok(primary.running, "a fenced primary's guest is paused");
  assert.ok(released.every((seq) => seq <= committedSeq), "only acknowledged outputs were released");
  const counter = primary.counter;
  await new Promise((r) => setTimeout(r, 30));
  assert.is(primary.counter, counter, "and it stays paused");
  const result = await sb.promise;
  assert.is(result.outcome, "takeover", "the standby heard no END: it is its turn");
});

test("standby lost and the witness confirms: held outputs go out, the guest runs on alone", async () => {
  const [a, b] = memoryPair();
  const primary = new ReferenceMachine(MACHINE);
  const released: number[] = [];
  let committedSeq = 0;
  const rep = replicate(primary, a, {
    intervalMs: 3,
    release: (o) => released.push(o.seq),
    onCommitted: (s) => (committedSeq = s.lastSeq),
    confirmOwnership: async () => true,
  });
  const sb = standby(new ReferenceMachine(MACHINE), b, { heartbeatTimeoutMs: 10_000, resume: false });
  await until(() => committedSeq >= 5);
  a.fail(new Error("link cut"));
  assert.is(await rejectionCode(rep.promise), ErrorCode.PeerLost);
  await sb.promise.catch(() => {});
  assert.ok(primary.running);
  const seen = released.length;
  await until(() => released.length > seen + 3);
  assert.equal(released, released.map((_, i) => i + 1), "one sequence, no gap");
  primary.pause();
});

test("the gate shuts mid-replication (lease ended): nothing more is released and the guest is paused", async () => {
  const [a, b] = memoryPair();
  const primary = new ReferenceMachine(MACHINE);
  const released: number[] = [];
  let leaseValid = true;
  const gate = new ReleaseGate((o) => released.push(o.seq), { lease: { valid: () => leaseValid } });
  const rep = replicate(primary, a, { intervalMs: 3, gate });
  const sb = standby(new ReferenceMachine(MACHINE), b, { heartbeatTimeoutMs: 10_000, resume: false });
  await until(() => released.length >= 5);
  leaseValid = false;
  assert.is(await rejectionCode(rep.promise), ErrorCode.Fenced);
  const count = released.length;
  assert.ok(gate.isShut);
  assert.not.ok(primary.running);
  await new Promise((r) => setTimeout(r, 30));
  assert.is(released.length, count);
  assert.is((await sb.promise).outcome, "takeover");
});

test.run();
