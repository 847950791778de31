/**
 * The network failover with real processes, as an operator runs it: `tandem secondary` and
 * `tandem primary` as child processes with the Linux guest, the primary starting passt
 * (`--net passt:tcp=...,socket=PATH`) and the secondary given the same socket
 * (`--net socket:PATH`). A TCP client on the host talks to the guest's tick service through
 * passt's forwarded port; the primary process is killed with SIGKILL mid-connection; the standby
 * takes over, connects to the same passt, and the connection goes on with no gap, duplicate or
 * corrupt byte either way (host/guests/linux-net-client.ts says how that is judged).
 *
 * It boots Linux (from the boot snapshot after the first time) in two processes, so it runs on
 * Node only by default (a minute or two here); on every runtime with TANDEM_LONG_TESTS=1.
 */

import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { LinuxLog } from "../../host/guests/linux-log.ts";
import { TICK_PORT, TickClient } from "../../host/guests/linux-net-client.ts";
import { runtimeName } from "../../host/runtime/runtime.ts";
import { freePort } from "../../host/witness/local-etcd.ts";
import { linuxGuestOrSkip } from "../support/linux.ts";
import { passtTest } from "../support/passt.ts";
import { until, within } from "../support/session.ts";
import { runTandem, startTandem, type TandemProcess } from "../support/tandem-process.ts";

const test = suite("tandem primary/secondary --net: a TCP connection to the Linux guest survives a SIGKILL of the primary process");
const long = globalThis.process?.env?.TANDEM_LONG_TESTS === "1";
/** The first run boots Linux with its network card (minutes on a loaded machine); later ones restore a snapshot. */
const NET_UP_MS = 600_000;

/** The JSON lines a `tandem ... --json` printed so far. */
function events(p: TandemProcess): { type: string; [key: string]: unknown }[] {
  return p.stdout().split("\n").filter((line) => line.startsWith("{")).map((line) => JSON.parse(line) as { type: string });
}

/** The guest's serial output both processes released, each seq once, in order. */
function released(processes: TandemProcess[]): string {
  const bySeq = new Map<number, string>();
  for (const p of processes) for (const e of events(p)) if (e.type === "output") bySeq.set(e.seq as number, e.text as string);
  return [...bySeq.keys()].sort((a, b) => a - b).map((seq) => bySeq.get(seq)).join("");
}

test("the client's connection stays open across the kill; ticks and echoes have no gap, no duplicate, no corruption", async () => {
  if (!linuxGuestOrSkip("the CLI network failover") || !passtTest("the CLI network failover")) return;
  if (!long && runtimeName() !== "node") return void console.log(`  (skipped the CLI network failover on ${runtimeName()}: it boots Linux twice; it runs on Node, and here with TANDEM_LONG_TESTS=1)`);
  const dir = mkdtempSync(join(tmpdir(), "tandem-cli-net-"));
  chmodSync(dir, 0o777); // passt started as root runs as nobody and binds its socket here
  const socket = join(dir, "passt.socket");
  const port = await freePort();
  const children: TandemProcess[] = [];
  let client: TickClient | undefined;
  let pinger: ReturnType<typeof setInterval> | undefined;
  let passtPid: number | undefined;
  try {
    const secondary = startTandem(["secondary", "--listen", "127.0.0.1:0", "--guest", "linux", "--net", `socket:${socket}`, "--json", "--heartbeat", "5000"]);
    children.push(secondary);
    await secondary.waitFor('"type":"listening"', 120_000);
    const address = events(secondary).find((e) => e.type === "listening")!.address as { port: number };
    const primary = startTandem(["primary", "--connect", `127.0.0.1:${address.port}`, "--guest", "linux", "--interval", "50", "--json",
      "--net", `passt:tcp=127.0.0.1/${port}:${TICK_PORT},socket=${socket}`]);
    children.push(primary);
    await primary.waitFor('"event":"started"', 60_000);
    passtPid = events(primary).find((e) => e.type === "network" && e.event === "started")!.pid as number;
    await primary.waitFor('"event":"connected"', 30_000);
    await until(() => released([primary]).includes("tandem-linux: net up") || primary.child.exitCode !== null, NET_UP_MS).catch((error: Error) => {
      throw new Error(`${error.message}: the guest's network did not come up; it said ${JSON.stringify(released([primary]).slice(-400))}; stderr ${primary.stderr().slice(-400)}`);
    });
    assert.match(released([primary]), /tandem-linux: dhcp \d+\.\d+\.\d+\.\d+/);
    // A standby takes over only once it holds a complete checkpoint.
    await primary.waitFor('"state":"protected"', 300_000);

    const c = (client = new TickClient(port));
    let pings = 0;
    pinger = setInterval(() => c.send(`ping ${++pings}`), 250);
    await until(() => c.ticks.length >= 10 && c.echoes.length >= 3, 120_000).catch((error: Error) => {
      throw new Error(`${error.message}: before the kill the client saw ${JSON.stringify(c.verdict())}`);
    });

    primary.signal("SIGKILL");
    await within(primary.exited, 10_000, "the primary's exit after SIGKILL");
    const ticksAtKill = c.ticks.length;
    await secondary.waitFor('"type":"takeover"', 60_000);
    await secondary.waitFor('"event":"connected"', 30_000);
    await until(() => c.ticks.length >= ticksAtKill + 20 || c.closed !== undefined, 180_000).catch((error: Error) => {
      throw new Error(`${error.message}: after the takeover the client saw ${JSON.stringify(c.verdict())}; secondary stderr ${secondary.stderr().slice(-400)}`);
    });
    clearInterval(pinger);
    const lastPing = `ping ${pings}`;
    await until(() => c.echoes.includes(lastPing) || c.closed !== undefined, 120_000).catch((error: Error) => {
      throw new Error(`${error.message}: the last ping was not echoed: ${JSON.stringify(c.verdict())}`);
    });

    const verdict = c.verdict();
    console.log(`  the client, ${verdict.ticks} ticks (${ticksAtKill} before the kill) and ${verdict.echoed} echoes: ${JSON.stringify(verdict)}`);
    assert.ok(verdict.open, `the connection stayed open (it ended: ${c.closed})`);
    assert.equal(c.bad, [], "no corrupted or foreign line: nothing from an epoch the standby did not hold");
    assert.ok(verdict.tickGaps === 0 && verdict.tickDuplicates === 0, `ticks 1..${verdict.lastTick} in order, once each: ${JSON.stringify(verdict)}`);
    assert.ok(verdict.lastTick > ticksAtKill, "the standby's guest went on ticking on the same connection");
    assert.equal(c.echoes, c.sent, "every line sent came back once, in order");
    assert.ok(verdict.ok, JSON.stringify(verdict));
    // The serial side too: the heartbeats both processes released have no gap and no duplicate.
    const log = new LinuxLog();
    log.see(released(children));
    const beats = log.heartbeatVerdict();
    assert.ok(beats.count > 0 && beats.gaps === 0 && beats.duplicates === 0, `heartbeats: ${JSON.stringify(beats)}`);
  } finally {
    clearInterval(pinger);
    client?.end();
    for (const p of children) p.signal("SIGKILL");
    await Promise.all(children.map((p) => within(p.exited, 10_000, "a tandem's exit after SIGKILL").catch(() => {})));
    // The passt the primary started outlives it by design: it is stopped here, by its pid.
    if (passtPid !== undefined) {
      try {
        process.kill(passtPid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the Linux demo with --net (long mode): its verdict says the TCP connection stayed open across the kill", async () => {
  if (!long) return void console.log("  (the Linux network demo runs with TANDEM_LONG_TESTS=1)");
  if (!linuxGuestOrSkip("the Linux network demo") || !passtTest("the Linux network demo")) return;
  const run = await runTandem(["demo", "--guest", "linux", "--net", "--duration", "12", "--kill-after", "4", "--json"], 900_000);
  assert.not.ok(run.timedOut, "the demo ended within its bound");
  const summary = JSON.parse(run.stdout.trim().split("\n").at(-1)!) as { ok: boolean; tcp: { open: boolean; ticks: number; ticks_before_kill: number; ok: boolean } | null };
  assert.ok(summary.tcp && summary.tcp.open && summary.tcp.ok && summary.tcp.ticks > summary.tcp.ticks_before_kill, JSON.stringify(summary));
  assert.ok(summary.ok, JSON.stringify(summary));
  assert.is(run.code, 0);
});

test.run();
