/**
 * `tandem demo --witness`: a partition in which only one side runs, then a heal and a
 * re-protection (docs/replication.md, "The witness"). It starts a local etcd (Debian's
 * etcd-server), then host a (`tandem primary`) and host b (`tandem secondary --join a`) as two
 * processes with `--witness`. Host a reaches etcd and b reaches a through proxies this process
 * can cut. Once the pair is protected and has run --kill-after seconds, host a is partitioned
 * from both: it cannot renew its lease, so it fences itself (its guest paused, nothing more
 * released), while b, hearing nothing, wins the guest's key once a's lease has expired and takes
 * over. A few seconds later the partition heals: a finds that b owns the guest and rejoins as
 * b's standby, and the pair is protected again with a newer generation. The outside world (this
 * process) keeps every output each side released, with the time it came, and judges: one side at
 * a time, one sequence, no gap and no duplicate.
 */

import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { ErrorCode, TandemError } from "../errors.ts";
import { selfCommand } from "../runtime/self-command.ts";
import { freePort, startLocalEtcd, type LocalEtcd } from "../witness/local-etcd.ts";
import { CommandConsole } from "./console.ts";
import { CounterLog } from "./guests.ts";
import { forwardLines } from "./lines.ts";
import type { Output } from "./output.ts";
import { startTcpProxy, type TcpProxy } from "./partition-proxy.ts";

/** What `tandem demo --witness` takes (a subset of the demo's options). */
export interface WitnessDemoValues {
  guest: string;
  memory?: number;
  hz: number;
  dirty: number;
  interval: number;
  duration: number;
  "kill-after": number;
  json: boolean;
}

/** The verdict of `tandem demo --witness`. */
export interface WitnessDemoSummary {
  /** From the cut to host a pausing its guest, fenced (it could not renew its lease). */
  fenced_ms: number | null;
  /** From the cut to host b running the guest (heartbeat, the lease's expiry, winning the key). */
  takeover_ms: number | null;
  /** The lease and heartbeat the sides ran with. */
  lease_ttl_s: number;
  heartbeat_ms: number;
  /** Outputs host a released after the cut, and after host b's first release (must be 0). */
  released_by_a_after_b: number;
  /** Counter values missing, and seen twice, in what the outside world received. */
  output_gaps: number;
  output_duplicates: number;
  /** After the heal: host a stands by for b, and the pair is protected again, with this generation. */
  reprotected_generation: number | null;
  ok: boolean;
}

const LEASE_TTL_S = 2;
const HEARTBEAT_MS = 300;
/** How long the partition lasts after host b took over, so that both sides are seen apart. */
const PARTITION_AFTER_TAKEOVER_MS = 2000;

/** One host of the pair, as a child process printing JSON lines. */
class DemoHost {
  readonly child: ChildProcess;
  readonly states: { state: string; generation: number; at: number }[] = [];
  tookOverAt: number | undefined;
  readonly exited: Promise<void>;
  constructor(readonly name: string, args: string[], ui: CommandConsole, onOutput: (host: string, seq: number, text: string) => void) {
    const script = fileURLToPath(new URL(import.meta.url.endsWith(".ts") ? "./main.ts" : "./main.js", import.meta.url));
    const [command, ...rest] = selfCommand(script, args);
    this.child = spawn(command, rest, { stdio: ["ignore", "pipe", "pipe"] });
    this.exited = new Promise((resolve) => this.child.once("exit", () => resolve()));
    forwardLines(this.child.stderr!, (line) => ui.err(`${name}: ${line}`));
    forwardLines(this.child.stdout!, (line) => {
      if (!line.startsWith("{")) return;
      const event = JSON.parse(line) as { type: string; seq: number; text: string; state: string; generation: number; message: string };
      if (event.type === "output") onOutput(name, event.seq, event.text);
      else if (event.type === "takeover") this.tookOverAt = performance.now();
      else if (event.type === "pair") {
        this.states.push({ state: event.state, generation: event.generation, at: performance.now() });
        ui.log(`host ${name}`, `${event.state}: ${event.message}`);
      }
    });
  }
  get state(): string | undefined {
    return this.states.at(-1)?.state;
  }
  /** When it first reached `state` after `since`, if it did. */
  reached(state: string, since = 0): number | undefined {
    return this.states.find((s) => s.state === state && s.at >= since)?.at;
  }
}

/** Resolves once `check` holds; false after `ms` or once `stop` says so. */
async function waitFor(check: () => boolean, ms: number, stop: () => boolean = () => false): Promise<boolean> {
  const end = performance.now() + ms;
  while (!check()) {
    if (performance.now() > end || stop()) return false;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return true;
}

/** Runs the demo; returns the exit status. */
export async function runWitnessDemo(values: WitnessDemoValues, io: Output, stopped: () => boolean): Promise<number> {
  if (values.guest !== "v86" && values.guest !== "reference") {
    throw new TandemError(ErrorCode.BadArgument, `demo --witness runs the built-in guests (--guest v86 or reference), not --guest ${values.guest}`);
  }
  const ui = new CommandConsole(io, "demo", { quietStatus: values.json });
  const guestArgs = ["--guest", values.guest, "--hz", String(values.hz), "--dirty", String(values.dirty), ...(values.memory !== undefined ? ["--memory", String(values.memory)] : [])];
  const world = new Map<number, string>();
  const log: { host: string; seq: number; at: number }[] = [];
  let conflicts = 0;
  const take = (host: string, seq: number, text: string) => {
    if (world.has(seq) && world.get(seq) !== text) conflicts++;
    world.set(seq, text);
    log.push({ host, seq, at: performance.now() });
    if (!values.json) ui.out(`${host}: ${text.replace(/\n$/, "")}`);
  };

  ui.log("witness", "starting a local etcd");
  let etcd: LocalEtcd | undefined;
  const proxies: TcpProxy[] = [];
  const hosts: DemoHost[] = [];
  try {
    etcd = await startLocalEtcd();
    const etcdPort = Number(new URL(etcd.endpoints[0]).port);
    const aToEtcd = await startTcpProxy(etcdPort);
    proxies.push(aToEtcd);
    const aPort = await freePort();
    const bPort = await freePort();
    const toA = await startTcpProxy(aPort);
    proxies.push(toA);
    const name = `demo-${process.pid}-${Date.now()}`;
    const common = ["--json", "--witness-name", name, "--lease-ttl", String(LEASE_TTL_S), "--heartbeat", String(HEARTBEAT_MS), ...guestArgs];
    const a = new DemoHost("a", ["primary", "--listen", `127.0.0.1:${aPort}`, "--interval", String(values.interval), "--witness", aToEtcd.url, "--side", "a", ...common], ui, take);
    hosts.push(a);
    // b joins a through the proxy; its own --listen is where a rejoins after the heal.
    const b = new DemoHost("b", ["secondary", "--join", `127.0.0.1:${toA.port}`, "--listen", `127.0.0.1:${bPort}`, "--witness", etcd.endpoints.join(","), "--side", "b", ...common], ui, take);
    hosts.push(b);

    const protectedA = await waitFor(() => a.state === "protected", 120_000, stopped);
    if (!protectedA) throw new TandemError(ErrorCode.Failed, "demo --witness: the pair was never protected (the hosts' messages are above)");
    ui.log("demo", `protected; partitioning host a in ${values["kill-after"]} s`);
    await waitFor(() => false, values["kill-after"] * 1000, stopped);
    const cutAt = performance.now();
    aToEtcd.cut();
    toA.cut();
    ui.log("demo", "host a cut from etcd and from host b");
    await waitFor(() => b.tookOverAt !== undefined && a.reached("fenced") !== undefined, 30_000, stopped);
    await waitFor(() => false, PARTITION_AFTER_TAKEOVER_MS, stopped);
    aToEtcd.heal();
    toA.heal();
    const healedAt = performance.now();
    ui.log("demo", "partition healed");
    await waitFor(() => b.reached("protected", healedAt) !== undefined, 60_000, stopped);
    const restMs = Math.max(0, values.duration * 1000 - (performance.now() - cutAt));
    await waitFor(() => false, Math.min(restMs, 5000), stopped);
    for (const host of hosts) host.child.kill("SIGINT");
    await Promise.race([Promise.all(hosts.map((h) => h.exited)), new Promise((resolve) => setTimeout(resolve, 10_000))]);

    const fencedAt = a.reached("fenced");
    const firstByB = Math.min(...log.filter((l) => l.host === "b").map((l) => l.at));
    const released = new CounterLog();
    for (const seq of [...world.keys()].sort((x, y) => x - y)) released.see(world.get(seq)!);
    const counters = released.counters;
    let gaps = counters.length > 0 ? counters[0] - 1 : 0;
    let duplicates = 0;
    for (let i = 1; i < counters.length; i++) {
      if (counters[i] === counters[i - 1]) duplicates++;
      else if (counters[i] > counters[i - 1] + 1) gaps += counters[i] - counters[i - 1] - 1;
    }
    const reprotected = b.states.find((s) => s.state === "protected" && s.at >= healedAt);
    const summary: WitnessDemoSummary = {
      fenced_ms: fencedAt === undefined ? null : Math.round(fencedAt - cutAt),
      takeover_ms: b.tookOverAt === undefined ? null : Math.round(b.tookOverAt - cutAt),
      lease_ttl_s: LEASE_TTL_S,
      heartbeat_ms: HEARTBEAT_MS,
      released_by_a_after_b: log.filter((l) => l.host === "a" && l.at >= firstByB).length,
      output_gaps: gaps,
      output_duplicates: duplicates + conflicts,
      reprotected_generation: reprotected?.generation ?? null,
      ok: false,
    };
    summary.ok = summary.fenced_ms !== null && summary.takeover_ms !== null && summary.released_by_a_after_b === 0 &&
      Number.isFinite(firstByB) && gaps === 0 && summary.output_duplicates === 0 && summary.reprotected_generation !== null;
    ui.end();
    ui.out(values.json ? JSON.stringify(summary) : formatSummary(summary));
    return summary.ok ? 0 : 1;
  } finally {
    for (const host of hosts) if (host.child.exitCode === null && host.child.signalCode === null) host.child.kill("SIGKILL");
    await Promise.all(hosts.map((h) => h.exited));
    for (const proxy of proxies) await proxy.close();
    await etcd?.stop();
  }
}

function formatSummary(s: WitnessDemoSummary): string {
  return [
    "",
    `partition              host a cut from etcd and from host b (lease ${s.lease_ttl_s} s, heartbeat ${s.heartbeat_ms} ms)`,
    `host a                 ${s.fenced_ms === null ? "NEVER FENCED" : `fenced itself ${s.fenced_ms} ms after the cut: guest paused, nothing more released`}`,
    `host b                 ${s.takeover_ms === null ? "NEVER TOOK OVER" : `won the guest's key and ran it ${s.takeover_ms} ms after the cut`}`,
    `one side at a time     ${s.released_by_a_after_b === 0 ? "host a released nothing once host b had begun" : `HOST A RELEASED ${s.released_by_a_after_b} OUTPUTS AFTER HOST B BEGAN`}`,
    `released output        ${s.output_gaps} gaps, ${s.output_duplicates} duplicates`,
    `after the heal         ${s.reprotected_generation === null ? "NOT PROTECTED AGAIN" : `host a stands by for host b: protected again, generation ${s.reprotected_generation}`}`,
    s.ok ? "ok" : "FAILED",
  ].join("\n");
}
