import { suite } from "uvu";
import * as assert from "uvu/assert";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { selfCommand } from "../../host/runtime/self-command.ts";
import { freePort, startLocalEtcd, type LocalEtcd } from "../../host/witness/local-etcd.ts";
import { etcdTest, uniqueGuest } from "../support/etcd.ts";
import { until } from "../support/session.ts";

const test = suite("tandem primary and secondary with a witness: real processes, a real etcd");
const MAIN = fileURLToPath(new URL("../../host/cli/main.ts", import.meta.url));
const GUEST = ["--guest", "reference", "--memory", "4", "--hz", "50", "--json"];
let etcd: LocalEtcd | undefined;
const dir = mkdtempSync(join(tmpdir(), "tandem-witness-cli-"));
const children: ChildProcess[] = [];

test.before(async () => {
  if (etcdTest("pair processes with a witness")) etcd = await startLocalEtcd();
});
test.after(async () => {
  for (const child of children) {
    if (child.exitCode !== null || child.signalCode !== null) continue;
    try {
      process.kill(child.pid!, "SIGKILL"); // by pid: Deno's ChildProcess.kill ignores every call after its first
    } catch {
      // it exited meanwhile
    }
  }
  await etcd?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** The outside world, reading every host's released outputs: each seq once, and who said it when. */
class World {
  readonly seen = new Map<number, string>();
  readonly log: { host: string; seq: number; at: number }[] = [];
  conflicts = 0;
  take(host: string, seq: number, text: string): void {
    const before = this.seen.get(seq);
    if (before !== undefined && before !== text) this.conflicts++;
    this.seen.set(seq, text);
    this.log.push({ host, seq, at: performance.now() });
  }
  /** Seqs 1..n, each once, no gap (the texts are checked by `conflicts`). */
  gapless(): boolean {
    const seqs = [...this.seen.keys()].sort((a, b) => a - b);
    return seqs.length > 0 && seqs.every((seq, i) => seq === i + 1);
  }
  by(host: string, after = 0): number {
    return this.log.filter((l) => l.host === host && l.at > after).length;
  }
}

/** A tandem process: its JSON lines, its pair states. */
class Host {
  readonly child: ChildProcess;
  readonly states: { state: string; generation: number; message: string; at: number }[] = [];
  readonly events: Record<string, unknown>[] = [];
  stderr = "";
  constructor(readonly name: string, args: string[], world: World) {
    const [command, ...rest] = selfCommand(MAIN, args);
    this.child = spawn(command, rest, { stdio: ["ignore", "pipe", "pipe"] });
    children.push(this.child);
    let text = "";
    this.child.stdout!.on("data", (chunk: Uint8Array) => {
      text += new TextDecoder().decode(chunk);
      const lines = text.split("\n");
      text = lines.pop()!;
      for (const line of lines) {
        let event: Record<string, unknown>;
        try {
          event = JSON.parse(line);
        } catch {
          continue;
        }
        this.events.push(event);
        if (event.type === "output") world.take(name, event.seq as number, event.text as string);
        if (event.type === "pair") this.states.push({ state: event.state as string, generation: event.generation as number, message: event.message as string, at: performance.now() });
      }
    });
    this.child.stderr!.on("data", (chunk: Uint8Array) => (this.stderr += new TextDecoder().decode(chunk)));
  }
  get state(): string | undefined {
    return this.states[this.states.length - 1]?.state;
  }
  /** Sends `signal` by pid: Deno's ChildProcess.kill ignores every call after its first (SIGSTOP, then SIGCONT). */
  kill(signal: NodeJS.Signals = "SIGKILL"): void {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    try {
      process.kill(this.child.pid!, signal);
    } catch {
      // it exited meanwhile
    }
  }
}

async function address(): Promise<string> {
  return `127.0.0.1:${await freePort()}`;
}

function witnessArgs(guest: string, side: string): string[] {
  return ["--witness", etcd!.endpoints.join(","), "--witness-name", guest, "--side", side];
}

test("SIGSTOP the primary past its lease, then SIGCONT: the standby took over, the old primary releases nothing more and rejoins as a standby", async () => {
  if (!etcd) return;
  const guest = uniqueGuest("sigstop");
  const world = new World();
  const [pa, pb] = [await address(), await address()];
  const a = new Host("a", ["primary", "--listen", pa, "--interval", "20", ...witnessArgs(guest, "a"), ...GUEST], world);
  await until(() => a.state === "alone" || a.events.some((e) => e.type === "listening"), 90_000);
  const b = new Host("b", ["secondary", "--join", pa, "--listen", pb, "--heartbeat", "300", ...witnessArgs(guest, "b"), ...GUEST], world);
  await until(() => a.state === "protected", 90_000);
  await until(() => world.by("a") > 10, 30_000);
  a.kill("SIGSTOP");
  const stoppedAt = performance.now();
  await until(() => b.events.some((e) => e.type === "takeover"), 30_000);
  const tookOverAt = performance.now();
  await until(() => world.by("b") > 5, 30_000);
  a.kill("SIGCONT");
  const continuedAt = performance.now();
  // The old primary finds its lease gone: fenced, then a standby of b, which is protected again.
  await until(() => a.states.some((s) => s.state === "fenced"), 30_000);
  await until(() => b.state === "protected", 90_000);
  await new Promise((r) => setTimeout(r, 500));
  assert.is(world.by("a", continuedAt), 0, "after SIGCONT the old primary released nothing");
  assert.is(world.conflicts, 0, "no seq ever came with two texts");
  assert.ok(world.gapless(), "one sequence, no gap");
  const generations = b.states.map((s) => s.generation);
  assert.ok(generations[generations.length - 1] > 2, `re-protected with a newer generation (${generations.join(",")})`);
  console.log(`  takeover with the witness: ${(tookOverAt - stoppedAt).toFixed(0)} ms after SIGSTOP (lease 2 s, heartbeat 300 ms; includes process noticing)`);
  a.kill();
  b.kill();
});

test("the standby killed: the primary's guest runs on; a new standby joins and the pair is protected again; then a chain of primary kills", async () => {
  if (!etcd) return;
  const guest = uniqueGuest("chain");
  const world = new World();
  const [pa, pb, pc] = [await address(), await address(), await address()];
  const a = new Host("a", ["primary", "--listen", pa, "--interval", "20", ...witnessArgs(guest, "a"), ...GUEST], world);
  await until(() => a.events.some((e) => e.type === "listening"), 90_000);
  const b = new Host("b", ["secondary", "--join", pa, "--listen", pb, "--heartbeat", "300", ...witnessArgs(guest, "b"), ...GUEST], world);
  await until(() => a.state === "protected", 90_000);
  b.kill();
  await until(() => a.state === "alone", 30_000);
  const aloneAt = performance.now();
  await until(() => world.by("a", aloneAt) > 10, 30_000);
  assert.is(a.child.exitCode, null, "the primary lives on");
  const c = new Host("c", ["secondary", "--join", pa, "--listen", pc, "--heartbeat", "300", ...witnessArgs(guest, "c"), ...GUEST], world);
  await until(() => a.state === "protected", 90_000);
  // Chain: kill a, c takes over; b comes back as a standby of c; kill c, b runs on.
  a.kill();
  await until(() => c.events.some((e) => e.type === "takeover"), 30_000);
  const b2 = new Host("b2", ["secondary", "--join", pc, "--listen", pb, "--heartbeat", "300", ...witnessArgs(guest, "b2"), ...GUEST], world);
  await until(() => c.state === "protected", 90_000);
  await until(() => world.by("c") > 5, 30_000);
  c.kill();
  await until(() => b2.events.some((e) => e.type === "takeover"), 30_000);
  const lastAt = performance.now();
  await until(() => world.by("b2", lastAt) > 10, 30_000);
  assert.is(world.conflicts, 0, "no seq ever came with two texts");
  assert.ok(world.gapless(), `one sequence of outputs 1..${world.seen.size}, no gap`);
  b2.kill();
});

test.run();
