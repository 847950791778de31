import { suite } from "uvu";
import * as assert from "uvu/assert";
import { V86Machine } from "../../host/emulators/v86/v86-machine.ts";
import { ErrorCode, TandemError } from "../../host/errors.ts";
import type { Machine } from "../../host/machine/machine.ts";
import { MemoryDisk } from "../../host/machine/memory-disk.ts";
import { ReferenceMachine } from "../../host/machine/reference-machine.ts";
import { connect, listen, type SocketTransport } from "../../host/protocol/socket-transport.ts";
import { memoryPair, type Transport } from "../../host/protocol/transport.ts";
import { migrate } from "../../host/replication/migrate.ts";
import { runStandbySide } from "../../host/replication/pair.ts";
import { replicate } from "../../host/replication/primary.ts";
import { standby } from "../../host/replication/secondary.ts";
import { bytesEqual } from "../support/flavors.ts";
import { until } from "../support/session.ts";

const test = suite("a standby whose guest differs is refused at connect, before anything is applied");
const MIB = 1 << 20;

function failure(promise: Promise<unknown>): Promise<TandemError> {
  return promise.then(() => assert.unreachable("it succeeded") as never, (error: TandemError) => error);
}

/** Runs a primary (or a migration) of `source` against a standby of `target`; returns both errors and whether the target's RAM stayed as it was. */
async function pair(source: Machine, target: Machine, transports: [Transport, Transport], how: "replicate" | "migrate") {
  const before = target.memory[0].bytes().slice();
  const waiting = standby(target, transports[1], { heartbeatTimeoutMs: 5000 });
  const sending = how === "replicate" ? replicate(source, transports[0], { intervalMs: 5 }) : migrate(source, transports[0]);
  const [standbyError, primaryError] = await Promise.all([failure(waiting.promise), failure(sending.promise)]);
  return { standbyError, primaryError, untouched: bytesEqual(target.memory[0].bytes(), before), sourceRunning: source.running };
}

test("reference machines of different memory, in process: both sides say so, the standby's RAM untouched", async () => {
  const primary = new ReferenceMachine({ memoryBytes: MIB, diskBytes: 64 * 1024 });
  const secondary = new ReferenceMachine({ memoryBytes: 2 * MIB, diskBytes: 64 * 1024 });
  secondary.step(3);
  const r = await pair(primary, secondary, memoryPair(), "replicate");
  assert.is(r.standbyError.code, ErrorCode.GuestMismatch);
  assert.match(r.standbyError.message, "the primary's guest is not this standby's: memory: primary 1 MiB, standby 2 MiB");
  assert.is(r.primaryError.code, ErrorCode.GuestMismatch);
  assert.match(r.primaryError.message, "the standby refused this guest");
  assert.match(r.primaryError.message, "memory 1 MiB", "the primary's error shows its own guest");
  assert.ok(r.untouched, "nothing was applied");
  assert.ok(r.sourceRunning, "the primary's guest runs on, alone");
  primary.pause();
});

test("a migration to a destination built differently is refused before the first round; the source runs on", async () => {
  const source = new ReferenceMachine({ memoryBytes: MIB, diskBytes: 64 * 1024, dirtyPages: 3 });
  const destination = new ReferenceMachine({ memoryBytes: MIB, diskBytes: 32 * 1024, dirtyPages: 3 });
  source.resume();
  const r = await pair(source, destination, memoryPair(), "migrate");
  assert.is(r.standbyError.code, ErrorCode.GuestMismatch);
  assert.match(r.standbyError.message, "disk: primary 64 KiB, standby 32 KiB");
  assert.is(r.primaryError.code, ErrorCode.GuestMismatch);
  assert.match(r.primaryError.message, "the destination refused this guest");
  assert.ok(r.untouched);
  assert.ok(r.sourceRunning, "the source runs on");
  source.pause();
});

test("v86 primary of 8 MiB, v86 standby of 16 MiB, over a real TCP socket", async () => {
  const make = (memoryBytes: number) => V86Machine.create({ memoryBytes, cmdline: "hz=50 dirty=4", disk: new MemoryDisk(256 * 1024), sharedMemory: false });
  const [primary, secondary] = await Promise.all([make(8 * MIB), make(16 * MIB)]);
  let accepted!: (t: SocketTransport) => void;
  const incoming = new Promise<SocketTransport>((resolve) => (accepted = resolve));
  const server = await listen({ host: "127.0.0.1", port: 0 }, (t) => accepted(t));
  try {
    const outgoing = await connect({ host: "127.0.0.1", port: (server.address as { port: number }).port });
    const r = await pair(primary, secondary, [outgoing, await incoming], "replicate");
    assert.is(r.standbyError.code, ErrorCode.GuestMismatch);
    assert.match(r.standbyError.message, "memory: primary 8 MiB, standby 16 MiB");
    assert.not.match(r.standbyError.message, "multiboot", "only what differs is listed");
    assert.is(r.primaryError.code, ErrorCode.GuestMismatch);
    assert.ok(r.untouched);
  } finally {
    await server.close();
    await Promise.all([primary.destroy(), secondary.destroy()]);
  }
});

test("a reference primary and a v86 standby: every differing field is listed", async () => {
  const primary = new ReferenceMachine({ memoryBytes: 8 * MIB, diskBytes: 256 * 1024 });
  const secondary = await V86Machine.create({ memoryBytes: 8 * MIB, disk: new MemoryDisk(256 * 1024), sharedMemory: false });
  try {
    const r = await pair(primary, secondary, memoryPair(), "replicate");
    assert.is(r.standbyError.code, ErrorCode.GuestMismatch);
    for (const phrase of ["machine: standby has none", "emulator: primary has none", "multiboot: primary has none"]) {
      assert.match(r.standbyError.message, phrase);
    }
    assert.not.match(r.standbyError.message, /[:;] memory:/, "the same memory is not listed");
    assert.match(r.standbyError.message, "vga memory: primary has none");
  } finally {
    primary.pause();
    await secondary.destroy();
  }
});

test("a pair's standby side refuses a primary built differently, and stands by for the next one", async () => {
  const secondary = new ReferenceMachine({ memoryBytes: MIB, diskBytes: 64 * 1024 });
  const wrong = new ReferenceMachine({ memoryBytes: 2 * MIB, diskBytes: 64 * 1024 });
  const right = new ReferenceMachine({ memoryBytes: MIB, diskBytes: 64 * 1024 });
  const [wrongEnd, wrongLink] = memoryPair();
  const [rightEnd, rightLink] = memoryPair();
  const queue: Transport[] = [wrongLink, rightLink];
  const notices: string[] = [];
  let applied = 0;
  const side = runStandbySide(secondary, {
    primaries: () => queue.length > 0 ? Promise.resolve(queue.shift()!) : new Promise<Transport>(() => {}),
    release: () => {},
    onNotice: (n) => notices.push(n.message),
    onStandby: (op) => op.onProgress((p) => void (applied = p.checkpoints ?? 0)),
  });
  const refused = await failure(replicate(wrong, wrongEnd, { intervalMs: 5 }).promise);
  assert.is(refused.code, ErrorCode.GuestMismatch);
  const good = replicate(right, rightEnd, { intervalMs: 5 });
  await until(() => applied >= 3, 10_000);
  assert.ok(notices.some((m) => m.startsWith("refused a primary built from another guest description") && m.includes("memory: primary 2 MiB, standby 1 MiB")), notices.join("\n"));
  good.abort(); // END: the standby stands down
  assert.is((await side).outcome, "stopped");
  await good.promise.catch(() => {});
  wrong.pause();
  right.pause();
});

test.run();
