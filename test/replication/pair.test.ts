import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ReferenceMachine, type ReferenceMachineOptions } from "../../host/machine/reference-machine.ts";
import { memoryPair, type Transport } from "../../host/protocol/transport.ts";
import { runPrimarySide, runStandbySide, type PairNotice, type PeerSource, type PrimarySideResult, type StandbySideResult } from "../../host/replication/pair.ts";
import { PairState } from "../../host/replication/pair-state.ts";
import { ReleaseGate, type ReleasedOutput } from "../../host/replication/release-gate.ts";
import { startLocalEtcd, type LocalEtcd } from "../../host/witness/local-etcd.ts";
import { Witness } from "../../host/witness/witness.ts";
import { etcdTest, uniqueGuest } from "../support/etcd.ts";
import { until, within } from "../support/session.ts";
import { startTcpProxy } from "../../host/cli/partition-proxy.ts";

const test = suite("pair: re-protection, a chain of failures, and the witness deciding who runs");
const MACHINE: ReferenceMachineOptions = { memoryBytes: 1 << 18, dirtyPages: 4, diskBytes: 8 * 1024, diskEvery: 3, seed: 3, stepsPerTick: 1, tickMs: 2 };
let etcd: LocalEtcd | undefined;

test.before(async () => {
  if (etcdTest("pair with a witness")) etcd = await startLocalEtcd();
});
test.after(async () => {
  await etcd?.stop();
});

/** The outside world: keeps each seq once; remembers who released what, and when. */
class World {
  readonly seen = new Map<number, string>();
  readonly log: { host: string; seq: number; at: number }[] = [];
  conflicts = 0;
  take(host: string, o: ReleasedOutput): void {
    const text = new TextDecoder().decode(o.data);
    const before = this.seen.get(o.seq);
    if (before !== undefined && before !== text) this.conflicts++;
    this.seen.set(o.seq, text);
    this.log.push({ host, seq: o.seq, at: performance.now() });
  }
  exact(): boolean {
    return this.firstFlaw() === undefined;
  }
  /** The first seq that is missing or does not say `counter <seq>`, for the failure message. */
  firstFlaw(): string | undefined {
    const seqs = [...this.seen.keys()].sort((a, b) => a - b);
    if (seqs.length === 0) return "nothing released";
    const bad = seqs.findIndex((seq, i) => seq !== i + 1 || this.seen.get(seq) !== `counter ${seq}\n`);
    if (bad < 0) return undefined;
    return `at seq ${seqs[bad]} (index ${bad}): '${this.seen.get(seqs[bad])?.trim()}', released by ${this.log.filter((l) => l.seq === seqs[bad]).map((l) => l.host).join(",")}`;
  }
  by(host: string): number {
    return this.log.filter((l) => l.host === host).length;
  }
}

/** Connections handed to a side one at a time, as a listening socket would. */
function queue(): { source: PeerSource; push(t: Transport): void } {
  const waiting: Transport[] = [];
  let wake: (() => void) | undefined;
  return {
    push(t) {
      waiting.push(t);
      wake?.();
    },
    source: async (signal) => {
      while (waiting.length === 0) {
        if (signal.aborted) throw new Error("stopped");
        await new Promise<void>((resolve) => {
          wake = resolve;
          signal.addEventListener("abort", () => resolve(), { once: true });
        });
      }
      return waiting.shift()!;
    },
  };
}

/** One host of the pair: a machine, its own connections, and a switch that kills it. */
const everyHost: Host[] = [];
test.after.each(() => cleanup(everyHost.splice(0)));

class Host {
  readonly machine = new ReferenceMachine(MACHINE);
  readonly incoming = queue();
  readonly controller = new AbortController();
  readonly notices: PairNotice[] = [];
  readonly links: Transport[] = [];
  dead = false;
  constructor(readonly name: string, readonly world: World) {
    everyHost.push(this);
  }
  release = (o: ReleasedOutput) => {
    if (!this.dead) this.world.take(this.name, o);
  };
  notice = (n: PairNotice) => this.notices.push(n);
  /** Dies: nothing more leaves it, its links break, its guest stops. */
  async kill(): Promise<void> {
    this.dead = true;
    this.machine.pause();
    for (const link of this.links) (link as Transport & { fail(e: Error): void }).fail(new Error(`${this.name} killed`));
    await new Promise((r) => setTimeout(r, 5));
    this.controller.abort();
  }
  lastState(): PairState | undefined {
    return this.notices[this.notices.length - 1]?.state;
  }
}

/** Stops whatever still runs, whatever happened (a failed test must not leave guests running). */
function cleanup(hosts: Host[]): void {
  for (const host of hosts) {
    host.dead = true;
    host.controller.abort();
    host.machine.pause();
  }
  setTimeout(() => hosts.forEach((h) => h.machine.pause()), 20); // after the drivers wound down
}

/** Connects a standby host to a primary host: the primary's end into the primary's queue. */
function join(primary: Host, standbyHost: Host, standbyQueue: { push(t: Transport): void }): void {
  const [p, s] = memoryPair();
  primary.links.push(p);
  standbyHost.links.push(s);
  primary.incoming.push(p);
  standbyQueue.push(s);
}

function primaryOf(host: Host, extra: Partial<Parameters<typeof runPrimarySide>[1]> = {}): Promise<PrimarySideResult> {
  return runPrimarySide(host.machine, {
    standbys: host.incoming.source, gate: new ReleaseGate(host.release), onNotice: host.notice, signal: host.controller.signal,
    replicate: { intervalMs: 4 }, ...extra,
  });
}

function standbyOf(host: Host, primaries: PeerSource, witness?: Witness): Promise<StandbySideResult> {
  return runStandbySide(host.machine, { primaries, release: host.release, heartbeatTimeoutMs: 300, onNotice: host.notice, signal: host.controller.signal, witness });
}

test("without a witness: the standby dies, the guest runs on alone, a new standby joins; then a chain of primary deaths", async () => {
  const world = new World();
  const a = new Host("a", world);
  const b = new Host("b", world);
  const c = new Host("c", world);
  const d = new Host("d", world);
  a.machine.resume();
  const aRun = primaryOf(a);
  // b joins, and dies: a runs on.
  const bIn = queue();
  const bRun = standbyOf(b, bIn.source);
  join(a, b, bIn);
  await until(() => a.lastState() === PairState.Protected, 5000);
  await b.kill();
  await within(bRun, 10_000, "b's standby side");
  await until(() => a.lastState() === PairState.Alone, 5000);
  const alone = world.by("a");
  await until(() => world.by("a") > alone + 20, 5000);
  // c joins: protected again, with the next generation.
  const cIn = queue();
  const cRun = standbyOf(c, cIn.source);
  join(a, c, cIn);
  await until(() => a.lastState() === PairState.Protected, 5000);
  assert.is(a.notices[a.notices.length - 1].generation, 2, "a second standby, a second generation");
  // a dies: c takes over, and takes standbys; d joins c; c dies: d runs on.
  await a.kill();
  const cTook = await within(cRun, 10_000, "c's standby side (a takeover)");
  assert.is(cTook.outcome, "takeover");
  if (cTook.outcome !== "takeover") return;
  const cPrimary = runPrimarySide(c.machine, {
    standbys: c.incoming.source, gate: cTook.gate, state: cTook.state, generation: cTook.generation, onNotice: c.notice, signal: c.controller.signal, replicate: { intervalMs: 4 },
  });
  const dIn = queue();
  const dRun = standbyOf(d, dIn.source);
  join(c, d, dIn);
  await until(() => c.lastState() === PairState.Protected, 5000);
  const beforeKill = world.seen.size;
  await c.kill();
  const dTook = await within(dRun, 10_000, "d's standby side (a takeover)");
  assert.is(dTook.outcome, "takeover");
  assert.ok(dTook.outcome === "takeover" && dTook.result.lastSeq > 0, "the takeover continues the sequence (from CHECKPOINT_END's last seq)");
  await until(() => world.seen.size > beforeKill + 20, 5000);
  assert.is(world.conflicts, 0);
  assert.ok(world.exact(), `one sequence of outputs 1..${world.seen.size}, no gap, no duplicate with other bytes: ${world.firstFlaw()}`);
  d.controller.abort();
  d.machine.pause();
  await Promise.all([aRun, cPrimary].map((p) => p.catch(() => {})));
  a.machine.pause();
  c.machine.pause();
});

test("with a witness: the link cut, both alive: only the primary releases, the standby declines and rejoins, protected again", async () => {
  if (!etcd) return;
  const guest = uniqueGuest("pair-link");
  const world = new World();
  const a = new Host("a", world);
  const b = new Host("b", world);
  const ownership = await new Witness({ endpoints: etcd.endpoints, guest, side: "a" }).claimFresh();
  a.machine.resume();
  const aRun = runPrimarySide(a.machine, {
    standbys: a.incoming.source, gate: new ReleaseGate(a.release, { lease: ownership }), ownership, onNotice: a.notice, signal: a.controller.signal, replicate: { intervalMs: 4 },
  });
  const bIn = queue();
  const bRun = standbyOf(b, bIn.source, new Witness({ endpoints: etcd.endpoints, guest, side: "b" }));
  join(a, b, bIn);
  await until(() => a.lastState() === PairState.Protected, 5000);
  for (const link of [...a.links]) (link as Transport & { fail(e: Error): void }).fail(new Error("link cut"));
  await until(() => b.notices.some((n) => /not taking over/.test(n.message)), 8000);
  assert.is(world.by("b"), 0, "the standby released nothing");
  assert.is(a.lastState(), PairState.Alone);
  const before = world.by("a");
  await until(() => world.by("a") > before + 10, 5000);
  join(a, b, bIn); // heal
  await until(() => a.lastState() === PairState.Protected, 5000);
  assert.is(a.notices[a.notices.length - 1].generation, 4, "claim 1, first standby 2, confirmed alone 3, rejoined 4");
  assert.ok(world.exact());
  a.controller.abort();
  b.controller.abort();
  await Promise.all([aRun, bRun]);
  a.machine.pause();
  await ownership.release();
});

test("with a witness: the primary cut from etcd fences itself before the standby wins and takes over", async () => {
  if (!etcd) return;
  const guest = uniqueGuest("pair-fence");
  const proxy = await startTcpProxy(etcd.members[0].clientPort);
  try {
    const world = new World();
    const a = new Host("a", world);
    const b = new Host("b", world);
    const ownership = await new Witness({ endpoints: [proxy.url], guest, side: "a" }).claimFresh();
    a.machine.resume();
    const aRun = runPrimarySide(a.machine, {
      standbys: a.incoming.source, gate: new ReleaseGate(a.release, { lease: ownership }), ownership, onNotice: a.notice, signal: a.controller.signal, replicate: { intervalMs: 4 },
    });
    const bIn = queue();
    const bRun = standbyOf(b, bIn.source, new Witness({ endpoints: etcd.endpoints, guest, side: "b" }));
    join(a, b, bIn);
    await until(() => a.lastState() === PairState.Protected, 5000);
    proxy.cut();
    const cutAt = performance.now();
    const aResult = await within(aRun, 10_000, "a's side");
    assert.is(aResult.outcome, "fenced");
    const fencedAt = performance.now();
    assert.ok(fencedAt - cutAt < 2000, `fenced ${(fencedAt - cutAt).toFixed(0)} ms after the cut, within the 2 s lease`);
    assert.not.ok(a.machine.running);
    const bTook = await within(bRun, 10_000, "b's standby side");
    assert.is(bTook.outcome, "takeover");
    await until(() => world.by("b") > 10, 5000);
    const lastA = Math.max(...world.log.filter((l) => l.host === "a").map((l) => l.at));
    const firstB = Math.min(...world.log.filter((l) => l.host === "b").map((l) => l.at));
    assert.ok(lastA < firstB, "the two never released at the same time");
    assert.ok(world.exact(), "one sequence across the fence and the takeover");
    b.machine.pause();
    if (bTook.outcome === "takeover") await bTook.ownership?.release();
  } finally {
    await proxy.close();
  }
});

test.run();
