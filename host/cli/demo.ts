/**
 * `tandem demo` (`npm start`): the main job, on the built-in guest in v86 (or, with --guest
 * reference, on the reference machine). The standby runs in this process; the primary in a
 * second process, replicating every --interval ms; --kill-after seconds after its first
 * checkpoint the primary is killed (SIGKILL) and the standby takes over, its counter continuing,
 * for the rest of --duration. The outside world (this process) keeps each output seq once, then
 * checks the guest's counter for gaps and duplicates, and the standby's disk against the digest
 * the primary reported for the checkpoint the standby took over from. Prints a summary, or one
 * JSON object with --json.
 */

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { ErrorCode, TandemError } from "../errors.ts";
import { disksDigest, stateDigest } from "../machine/state-digest.ts";
import { listen, type SocketTransport } from "../protocol/socket-transport.ts";
import type { ReleasedOutput } from "../replication/primary.ts";
import { standby, type StandbyResult } from "../replication/secondary.ts";
import { selfCommand } from "../runtime/self-command.ts";
import { CounterLog, GUEST_OPTIONS, guestFrom } from "./guests.ts";
import { runLinuxDemo } from "./linux-demo.ts";
import { runWitnessDemo } from "./witness-demo.ts";
import { CommandConsole } from "./console.ts";
import { forwardLines } from "./lines.ts";
import { Lifetime } from "./lifetime.ts";
import { percentile, round } from "./pause-stats.ts";
import { defineCommand, flag, number, type OptionValues } from "./options.ts";
import type { Output } from "./output.ts";

/** The demo's verdict. */
export interface DemoSummary {
  checkpoints: number;
  pause_ms_p50: number;
  pause_ms_p99: number;
  /** From the standby noticing the primary's death to its machine running. */
  failover_ms: number | null;
  /** From the kill to the standby noticing it. */
  detection_ms: number | null;
  /** Counter values missing, and seen twice, in what the outside world received. */
  output_gaps: number;
  output_duplicates: number;
  /** The last counter the primary released, and the first the standby released after taking over. */
  last_primary_counter: number;
  first_standby_counter: number | null;
  /**
   * The guest found every disk sector it re-read as it had written it, across the takeover, and
   * the standby's disk at takeover equals the disk of the checkpoint it took over from (as the
   * primary hashed it).
   */
  disk_verified: boolean;
  /**
   * The standby's disk at takeover against the primary's digest of that checkpoint's disk; null
   * without a takeover (or with --verify-state, which checks the whole state instead).
   */
  disk_at_takeover_verified: boolean | null;
  /**
   * With --verify-state: the standby's RAM, disks and devices (devices only where their saved
   * state is byte-stable: not v86's), at takeover, hash the same as the checkpoint it holds did
   * on the primary. Null without --verify-state or without a takeover.
   */
  state_verified: boolean | null;
  /** Why the standby ended without a takeover or a clean stop, if it did. */
  error?: string;
  ok: boolean;
}

const DEMO_OPTIONS = {
  interval: number("MS", "take a checkpoint every MS milliseconds", { above: 0, max: 60_000, default: 50, unit: "milliseconds" }),
  duration: number("S", "run for S seconds", { above: 0, max: 86_400, default: 6, unit: "seconds" }),
  "kill-after": number("S", "kill the primary S seconds after its first checkpoint", { above: 0, max: 86_400, default: 3, unit: "seconds" }),
  "no-kill": flag("stop the primary cleanly instead"),
  "verify-state": flag("compare the standby with the primary's checkpoint, byte for byte (by hash)"),
  net: flag("--guest linux: on a network (passt), with a TCP connection to the guest kept open across the kill"),
  witness: flag("start a local etcd (Debian's etcd-server) as the witness, partition the primary\nfrom it and from the standby after --kill-after seconds: it fences itself, the\nstandby takes over; then heal: the old primary rejoins as the standby"),
  ...GUEST_OPTIONS,
};
type DemoValues = OptionValues<typeof DEMO_OPTIONS>;

/** `tandem demo`: see the top of this file. */
export const demoCommand = defineCommand({
  name: "demo",
  summary: "The main job: replicate the built-in guest to a standby, kill -9 the primary, and watch\nthe standby take over with no gap in its output.",
  options: DEMO_OPTIONS,
}, async ({ values }, io) => {
  const lifetime = new Lifetime();
  try {
    return await runDemo(values, io, lifetime);
  } finally {
    lifetime.dispose();
  }
});

async function runDemo(values: DemoValues, io: Output, lifetime: Lifetime): Promise<number> {
  const duration = values.duration * 1000;
  const killAfter = values["kill-after"] * 1000;
  if (killAfter >= duration) {
    throw new TandemError(ErrorCode.BadArgument, `demo: --kill-after ${values["kill-after"]} must be below --duration ${values.duration} (seconds)`);
  }
  if (values.witness) {
    if (values["no-kill"] || values["verify-state"] || values.net) throw new TandemError(ErrorCode.BadArgument, "demo --witness partitions the primary instead of killing it; it takes no --no-kill, --verify-state or --net");
    return runWitnessDemo(values, io, () => lifetime.stoppedBy !== undefined);
  }
  if (values.guest === "linux") {
    if (values["no-kill"] || values["verify-state"]) throw new TandemError(ErrorCode.BadArgument, "demo --guest linux always kills its primary and judges the guest's files; --no-kill and --verify-state are the built-in guest's");
    return runLinuxDemo(values, io);
  }
  if (values.net) throw new TandemError(ErrorCode.BadArgument, "demo --net is the Linux guest's (--guest linux --net): the built-in guest has no network driver");
  const ui = new CommandConsole(io, "demo", { quietStatus: values.json });

  // The outside world: each seq once.
  const world = new Map<number, string>();
  let conflicts = 0;
  const fromPrimary = new CounterLog();
  const fromStandby = new CounterLog();
  const take = (o: ReleasedOutput | { seq: number; text: string }, standbyReleased: boolean) => {
    const text = "text" in o ? o.text : new TextDecoder().decode(o.data);
    if (world.has(o.seq) && world.get(o.seq) !== text) conflicts++;
    world.set(o.seq, text);
    (standbyReleased ? fromStandby : fromPrimary).see(text);
    if (!values.json) ui.out(text.replace(/\n$/, ""));
  };

  // The standby, here, with its own images of the guest's writable disks (the primary writes those the guest file names).
  const ownDisks = mkdtempSync(join(tmpdir(), "tandem-demo-standby-"));
  const guest = await guestFrom(values, { ownDisksIn: ownDisks }).catch((error: unknown) => {
    rmSync(ownDisks, { recursive: true, force: true });
    throw error;
  });
  const machine = guest.machine;
  let accept!: (t: SocketTransport) => void;
  const accepted = new Promise<SocketTransport>((resolve) => (accept = resolve));
  const server = await listen({ port: 0 }, (t) => accept(t));
  const port = "port" in server.address ? server.address.port : 0;

  // The primary, in its own process.
  const script = fileURLToPath(new URL(import.meta.url.endsWith(".ts") ? "./main.ts" : "./main.js", import.meta.url));
  const [command, ...rest] = selfCommand(script, [
    "primary", "--connect", `127.0.0.1:${port}`, "--json", "--interval", String(values.interval), ...guest.args,
    ...(values["verify-state"] ? ["--digests"] : ["--disk-digests"]),
  ]);
  const child = spawn(command, rest, { stdio: ["ignore", "pipe", "pipe"] });
  // The primary's log lines pass through this console, so they never cut into its status line.
  forwardLines(child.stderr!, (line) => ui.err(line));
  const pauses: number[] = [];
  const digests = new Map<number, string>();
  const diskDigests = new Map<number, string>();
  let replicating!: () => void;
  const firstCheckpoint = new Promise<void>((resolve) => (replicating = resolve));
  forwardLines(child.stdout!, (line) => {
    if (line.startsWith("{")) {
      const event = JSON.parse(line) as { type: string; seq: number; text: string; pauseMs: number; checkpoint: number; digest: string };
      if (event.type === "disks") diskDigests.set(event.checkpoint, event.digest);
      if (event.type === "output") take(event, false);
      else if (event.type === "checkpoint") {
        pauses.push(event.pauseMs);
        replicating();
      }
      else if (event.type === "suspended") digests.set(event.checkpoint, event.digest);
    }
  });
  const childExit = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  // A primary that dies or is interrupted before connecting must not leave the demo waiting.
  const transport = await Promise.race([accepted, childExit.then(() => undefined), lifetime.stopped().then(() => undefined)]);
  if (transport === undefined) {
    child.kill("SIGKILL");
    await childExit;
    void server.close();
    await guest.close();
    rmSync(ownDisks, { recursive: true, force: true });
    if (lifetime.stoppedBy) return 0;
    throw new TandemError(ErrorCode.Failed, "demo: the primary process exited before connecting (its messages are above)");
  }
  void server.close(); // stop listening; its promise settles only when this connection ends
  const verify = values["verify-state"];
  const op = standby(machine, transport, { heartbeatTimeoutMs: 500, release: (o) => take(o, true), resume: !verify });
  const ticker = setInterval(() => {
    const p50 = percentile(pauses, 0.5);
    const standbyNote = fromStandby.counters.length > 0 ? `; standby took over at counter ${fromStandby.counters[0]}, now ${fromStandby.last}` : "";
    ui.status(`primary pid ${child.pid}: ${pauses.length} checkpoints, pause p50 ${p50.toFixed(2)} ms, counter ${fromPrimary.last}${standbyNote}`);
  }, 200);

  // --kill-after counts from the first committed checkpoint: a slow start (a loaded machine, a
  // runtime compiling the primary) must not kill the primary before it has replicated anything.
  let killedAt: number | undefined;
  let killer: ReturnType<typeof setTimeout> | undefined;
  const startupLimit = setTimeout(() => child.kill("SIGKILL"), 60_000);
  void firstCheckpoint.then(() => {
    clearTimeout(startupLimit);
    killer = setTimeout(() => {
      if (values["no-kill"]) {
        child.kill("SIGINT"); // a clean stop: the primary stands the standby down
      } else {
        killedAt = performance.now();
        child.kill("SIGKILL");
      }
    }, killAfter);
  });
  // Interrupted: stop the primary cleanly (it stands the standby down), then sum up what happened.
  void lifetime.stopped().then(() => child.exitCode === null && child.kill("SIGINT"));
  let result: StandbyResult | undefined;
  let standbyError: Error | undefined;
  try {
    result = await op.promise;
  } catch (error) {
    standbyError = error as Error;
  }
  const detectedAt = performance.now();
  let stateVerified: boolean | null = null;
  let diskAtTakeover: boolean | null = null;
  if (result?.outcome === "takeover" && !verify) {
    const digest = diskDigests.get(result.checkpoint);
    diskAtTakeover = digest === undefined ? null : digest === disksDigest(machine.disks.map((d) => d.read(0, d.size)));
  }
  if (verify && result?.outcome === "takeover") {
    stateVerified = stateDigest(machine, { devices: guest.stableDevices }) === digests.get(result.checkpoint);
    await machine.resume();
  }
  // Let the standby run on (re-reading sectors written before the takeover) for the rest of --duration.
  if (result?.outcome === "takeover") {
    let runOn: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([new Promise((r) => (runOn = setTimeout(r, duration - killAfter))), lifetime.stopped()]);
    clearTimeout(runOn);
  }
  clearInterval(ticker);
  clearTimeout(killer);
  clearTimeout(startupLimit);
  await guest.close();
  child.kill("SIGKILL");
  await childExit;
  rmSync(ownDisks, { recursive: true, force: true });
  ui.end();

  const released = new CounterLog();
  for (const seq of [...world.keys()].sort((a, b) => a - b)) released.see(world.get(seq)!);
  const counters = released.counters;
  let gaps = 0;
  let duplicates = 0;
  for (let i = 1; i < counters.length; i++) {
    if (counters[i] === counters[i - 1]) duplicates++;
    else if (counters[i] > counters[i - 1] + 1) gaps += counters[i] - counters[i - 1] - 1;
  }
  if (counters.length > 0 && counters[0] !== 1) gaps += counters[0] - 1;
  const tookOver = result?.outcome === "takeover";
  const summary: DemoSummary = {
    checkpoints: pauses.length,
    pause_ms_p50: round(percentile(pauses, 0.5)),
    pause_ms_p99: round(percentile(pauses, 0.99)),
    failover_ms: tookOver ? round(result!.failoverMs!) : null,
    detection_ms: tookOver && killedAt !== undefined ? round(detectedAt - killedAt - result!.failoverMs!) : null,
    output_gaps: gaps,
    output_duplicates: duplicates + conflicts,
    last_primary_counter: fromPrimary.last,
    first_standby_counter: fromStandby.counters[0] ?? null,
    disk_verified: released.diskErrors === 0 && diskAtTakeover !== false,
    disk_at_takeover_verified: diskAtTakeover,
    state_verified: stateVerified,
    ...(standbyError ? { error: standbyError.message } : {}),
    ok: false,
  };
  summary.ok = !standbyError && summary.checkpoints > 0 && gaps === 0 && summary.output_duplicates === 0 && summary.disk_verified &&
    stateVerified !== false && (!verify || values["no-kill"] || stateVerified === true) &&
    (values["no-kill"] ? result?.outcome === "stopped" : tookOver && summary.first_standby_counter !== null && (verify || diskAtTakeover !== null));
  if (values.json) {
    ui.out(JSON.stringify(summary));
  } else {
    if (standbyError) ui.log("standby failed", standbyError.message);
    ui.out(formatSummary(summary, values["no-kill"]));
  }
  return summary.ok ? 0 : 1;
}

function formatSummary(s: DemoSummary, noKill: boolean): string {
  return [
    "",
    `checkpoints            ${s.checkpoints} (pause p50 ${s.pause_ms_p50} ms, p99 ${s.pause_ms_p99} ms)`,
    noKill
      ? "primary                stopped cleanly; the standby stood down"
      : `primary killed         after counter ${s.last_primary_counter} was released`,
    noKill ? "" : `standby took over      detected in ${s.detection_ms} ms, running ${s.failover_ms} ms later, counter continued from ${s.first_standby_counter}`,
    `released output        ${s.output_gaps} gaps, ${s.output_duplicates} duplicates`,
    `disk                   ${s.disk_verified ? "every sector the guest re-read was as it wrote it" : "A LOST OR TORN WRITE, OR A STANDBY DISK UNLIKE THE CHECKPOINT'S"}`,
    s.disk_at_takeover_verified === null ? "" : `standby disk           ${s.disk_at_takeover_verified ? "equal, at takeover, to the disk of the checkpoint it took over from" : "DIFFERS FROM THE CHECKPOINT'S DISK"}`,
    s.state_verified === null ? "" : `standby state          ${s.state_verified ? "equal, byte for byte, to the checkpoint the primary recorded" : "DIFFERS FROM THE PRIMARY'S CHECKPOINT"}`,
    s.ok ? "ok" : "FAILED",
  ].filter((line) => line !== "").join("\n");
}
