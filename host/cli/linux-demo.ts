/**
 * `tandem demo --guest linux` (`npm start -- --guest linux`): the demo on a real Linux. The
 * standby runs in this process, the primary in a second one, each with its own copy of the ext4
 * data disk; the primary starts from the boot snapshot and runs the file workload, replicated
 * every --interval ms, and --kill-after seconds after its first checkpoint it is killed with
 * SIGKILL. The standby takes over and runs for the rest of --duration. Then the verdicts:
 *
 * - the released output, as the outside world (this process) got it, seq by seq: heartbeats and
 *   files each numbered 1, 2, 3... with no gap and no duplicate;
 * - the standby's disk, after e2fsck replayed the journal on a copy: no error, and every file
 *   whose checksum the guest released is there with that checksum (linux-disk-check.ts).
 *
 * With --net the guest lives on a network: this process starts passt, forwarding a free loopback
 * port to the guest's tick service, and both sides use its socket (the primary from its start,
 * the standby from its takeover). The guest runs its network workload instead of the file one; a
 * client here keeps one TCP connection open to it, and the primary is killed only once that
 * connection carries ticks and echoes. The verdict then also judges the connection: still open,
 * ticks and echoes with no gap, duplicate or corrupt line (linux-net-client.ts).
 */

import { spawn } from "node:child_process";
import { copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { NET_CHANNEL } from "../emulators/v86/v86-nic.ts";
import { checkLinuxDisk, type LinuxDiskVerdict } from "../guests/linux-disk-check.ts";
import { LinuxLog, type SeriesVerdict } from "../guests/linux-log.ts";
import { linuxGuestFiles } from "../guests/linux-guest.ts";
import { TICK_PORT, TickClient, type TickVerdict } from "../guests/linux-net-client.ts";
import { GuestNetwork } from "../net/guest-network.ts";
import { startPasst, type Passt } from "../net/passt.ts";
import { listen, type SocketTransport } from "../protocol/socket-transport.ts";
import type { ReleasedOutput } from "../replication/primary.ts";
import { standby, type StandbyResult } from "../replication/secondary.ts";
import { selfCommand } from "../runtime/self-command.ts";
import { freePort } from "../witness/local-etcd.ts";
import { guestFrom, type GuestValues } from "./guests.ts";
import type { Output } from "./output.ts";
import { percentile, round } from "./pause-stats.ts";

/** The Linux demo's verdict. */
export interface LinuxDemoSummary {
  guest: "linux";
  checkpoints: number;
  pause_ms_p50: number;
  pause_ms_p99: number;
  /** From the standby noticing the primary's death to its machine running. */
  failover_ms: number | null;
  /** From the kill to the standby noticing it. */
  detection_ms: number | null;
  heartbeats: SeriesVerdict;
  files: SeriesVerdict;
  /** The last file number the primary released, and the first the standby released. */
  last_primary_file: number;
  first_standby_file: number | null;
  /** The standby's data disk after the run. */
  disk: LinuxDiskVerdict | null;
  /** With --net: the client's TCP connection to the guest, across the kill. */
  tcp?: (TickVerdict & { ticks_before_kill: number }) | null;
  error?: string;
  ok: boolean;
}

/** What the Linux demo takes (the demo's own options). */
export interface LinuxDemoValues extends GuestValues {
  interval: number;
  duration: number;
  "kill-after": number;
  net: boolean;
  json: boolean;
}

/** Booting with no snapshot yet takes minutes on a loaded machine; after that, seconds. */
const STARTUP_LIMIT_MS = 15 * 60_000;
/** With --net: from the first checkpoint to a connection carrying ticks (DHCP, services), at most. */
const NET_READY_LIMIT_MS = 5 * 60_000;
/** With --net, after the takeover: how long the connection may take to carry new ticks and the last echo. */
const NET_AFTER_LIMIT_MS = 60_000;
/** What the client must have seen before the primary is killed. */
const TICKS_BEFORE_KILL = 10;
const ECHOES_BEFORE_KILL = 3;
/** A line for the guest to echo, every so often. */
const PING_MS = 250;

/** Resolves once `check` holds, or after `ms` (whichever first); true if it held. */
async function waitFor(check: () => boolean, ms: number): Promise<boolean> {
  const deadline = performance.now() + ms;
  while (!check()) {
    if (performance.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return true;
}

export async function runLinuxDemo(values: LinuxDemoValues, io: Output): Promise<number> {
  const files = linuxGuestFiles(); // says how to build the guest when it is not built
  const duration = values.duration * 1000;
  const killAfter = values["kill-after"] * 1000;
  const tty = process.stderr.isTTY === true && !values.json;
  const status = (line: string) => {
    if (tty) process.stderr.write(`\r\x1b[K${line}`);
  };
  const dir = mkdtempSync(join(tmpdir(), "tandem-linux-demo-"));
  const primaryDisk = join(dir, "primary.img");
  const standbyDisk = join(dir, "standby.img");
  copyFileSync(files.dataImage, primaryDisk);
  copyFileSync(files.dataImage, standbyDisk);
  let passt: Passt | undefined;
  let network: GuestNetwork | undefined;
  let client: TickClient | undefined;
  let pinger: ReturnType<typeof setInterval> | undefined;
  try {
    // The network outlives either host: this process holds it, the primary and then the standby connect.
    const tickPort = values.net ? await freePort() : 0;
    if (values.net) passt = await startPasst({ tcpForwards: [`127.0.0.1/${tickPort}:${TICK_PORT}`] });
    // The outside world: each seq once.
    const world = new Map<number, string>();
    let conflicts = 0;
    const fromPrimary = new LinuxLog();
    const fromStandby = new LinuxLog();
    let netUp = false;
    let recent = "";
    const take = (o: ReleasedOutput | { seq: number; text: string }, standbyReleased: boolean) => {
      if ("channel" in o && o.channel === NET_CHANNEL) return void network?.release(o.data);
      const text = "text" in o ? o.text : new TextDecoder().decode(o.data);
      recent = (recent + text).slice(-200);
      netUp ||= recent.includes("tandem-linux: net up");
      if (world.has(o.seq) && world.get(o.seq) !== text) conflicts++;
      world.set(o.seq, text);
      (standbyReleased ? fromStandby : fromPrimary).see(text);
      if (!values.json && !tty) io.out(text.replace(/\r?\n$/, ""));
    };

    const guest = await guestFrom({ ...values, disk: standbyDisk }, { role: "receives", network: values.net });
    const machine = guest.machine;
    if (passt) network = new GuestNetwork(guest.nic!, { kind: "socket", path: passt.socketPath });
    let accept!: (t: SocketTransport) => void;
    const accepted = new Promise<SocketTransport>((resolve) => (accept = resolve));
    const server = await listen({ port: 0 }, (t) => accept(t));
    const port = "port" in server.address ? server.address.port : 0;

    const script = fileURLToPath(new URL(import.meta.url.endsWith(".ts") ? "./main.ts" : "./main.js", import.meta.url));
    const [command, ...rest] = selfCommand(script, [
      "primary", "--connect", `127.0.0.1:${port}`, "--json", "--interval", String(values.interval), ...guest.args, "--disk", primaryDisk,
      ...(passt ? ["--net", `socket:${passt.socketPath}`] : []),
    ]);
    status("starting the primary: restoring Linux from its boot snapshot (the first run boots it, which takes minutes)");
    const child = spawn(command, rest, { stdio: ["ignore", "pipe", "inherit"] });
    const pauses: number[] = [];
    let replicating!: () => void;
    const firstCheckpoint = new Promise<void>((resolve) => (replicating = resolve));
    let pending = "";
    child.stdout!.on("data", (chunk: Uint8Array) => {
      pending += new TextDecoder().decode(chunk);
      const lines = pending.split("\n");
      pending = lines.pop()!;
      for (const line of lines) {
        if (!line.startsWith("{")) continue;
        const event = JSON.parse(line) as { type: string; seq: number; text: string; pauseMs: number };
        if (event.type === "output") take(event, false);
        else if (event.type === "checkpoint") {
          pauses.push(event.pauseMs);
          replicating();
        }
      }
    });
    const childExit = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    const transport = await Promise.race([accepted, childExit.then(() => undefined)]);
    if (!transport) {
      await guest.close();
      throw new Error("the primary exited before it connected (its error is above)");
    }
    void server.close();
    // A kill closes the connection, which the standby sees at once; the heartbeat timeout only
    // covers a primary that hangs, and is long because a loaded machine can stall a Linux
    // primary's event loop for a second or more (its first checkpoint pauses it for seconds).
    const op = standby(machine, transport, { heartbeatTimeoutMs: 5000, release: (o) => take(o, true) });
    const ticker = setInterval(() => {
      const taken = fromStandby.fileNumbers.length + fromStandby.heartbeats.length > 0
        ? `; standby took over: file ${fromStandby.fileVerdict().last}, heartbeat ${fromStandby.heartbeatVerdict().last}` : "";
      status(`primary pid ${child.pid}: ${pauses.length} checkpoints, pause p50 ${percentile(pauses, 0.5).toFixed(1)} ms, ` +
        `file ${fromPrimary.fileVerdict().last}, heartbeat ${fromPrimary.heartbeatVerdict().last}${taken}`);
    }, 250);

    let killedAt: number | undefined;
    let killer: ReturnType<typeof setTimeout> | undefined;
    let ticksAtKill = 0;
    const startupLimit = setTimeout(() => child.kill("SIGKILL"), STARTUP_LIMIT_MS);
    // With --net, the client connects once the guest's services listen, and the kill waits for
    // its connection to carry ticks and echoes (or for the limit, and the verdict then says so).
    const connected = !values.net ? Promise.resolve() : firstCheckpoint.then(async () => {
      if (!(await waitFor(() => netUp || child.exitCode !== null, NET_READY_LIMIT_MS)) || child.exitCode !== null) return;
      const c = (client = new TickClient(tickPort));
      let pings = 0;
      pinger = setInterval(() => c.send(`ping ${++pings}`), PING_MS);
      await waitFor(() => (c.ticks.length >= TICKS_BEFORE_KILL && c.echoes.length >= ECHOES_BEFORE_KILL) || c.closed !== undefined, NET_READY_LIMIT_MS);
    });
    void firstCheckpoint.then(() => {
      clearTimeout(startupLimit);
      killer = setTimeout(() => void connected.then(() => {
        killedAt = performance.now();
        ticksAtKill = client?.ticks.length ?? 0;
        child.kill("SIGKILL");
      }), killAfter);
    });
    let result: StandbyResult | undefined;
    let standbyError: Error | undefined;
    try {
      result = await op.promise;
    } catch (error) {
      standbyError = error as Error;
    }
    const detectedAt = performance.now();
    const tookOver = result?.outcome === "takeover" && result.checkpoint > 0;
    if (tookOver) network?.up().catch(() => {}); // retried each second until it answers
    if (tookOver) await new Promise((r) => setTimeout(r, Math.max(duration - killAfter, 1000)));
    if (tookOver && client) {
      const c = client;
      await waitFor(() => c.ticks.length >= ticksAtKill + TICKS_BEFORE_KILL || c.closed !== undefined, NET_AFTER_LIMIT_MS);
      clearInterval(pinger);
      const last = c.sent.at(-1);
      await waitFor(() => last === undefined || c.echoes.includes(last) || c.closed !== undefined, NET_AFTER_LIMIT_MS);
    }
    clearInterval(pinger);
    const tcp = values.net ? (client ? { ...client.verdict(), ticks_before_kill: ticksAtKill } : null) : undefined;
    client?.end();
    clearInterval(ticker);
    clearTimeout(killer);
    clearTimeout(startupLimit);
    await guest.close(); // stops the standby and flushes its disk
    child.kill("SIGKILL");
    await childExit;
    status("");

    const released = new LinuxLog();
    for (const seq of [...world.keys()].sort((a, b) => a - b)) released.see(world.get(seq)!);
    const heartbeats = released.heartbeatVerdict();
    const fileSeries = released.fileVerdict();
    const disk = tookOver ? checkLinuxDisk(standbyDisk, released.files) : null;
    const summary: LinuxDemoSummary = {
      guest: "linux",
      checkpoints: pauses.length,
      pause_ms_p50: round(percentile(pauses, 0.5)),
      pause_ms_p99: round(percentile(pauses, 0.99)),
      failover_ms: tookOver ? round(result!.failoverMs!) : null,
      detection_ms: tookOver && killedAt !== undefined ? round(detectedAt - killedAt - result!.failoverMs!) : null,
      heartbeats,
      files: { ...fileSeries, duplicates: fileSeries.duplicates + conflicts },
      last_primary_file: fromPrimary.fileVerdict().last,
      first_standby_file: fromStandby.fileNumbers[0] ?? null,
      disk,
      ...(tcp !== undefined ? { tcp } : {}),
      ...(standbyError ? { error: standbyError.message } : {}),
      ok: false,
    };
    // The network workload writes no files: there the connection is judged instead.
    const workloadOk = tcp !== undefined ? tcp !== null && tcp.ok && tcp.ticks_before_kill > 0 && tcp.ticks > tcp.ticks_before_kill
      : fileSeries.count > 0 && fileSeries.gaps === 0 && summary.files.duplicates === 0;
    summary.ok = !standbyError && tookOver && summary.checkpoints > 0 && heartbeats.count > 0 && heartbeats.gaps === 0 && heartbeats.duplicates === 0 &&
      workloadOk && disk !== null && disk.ok;
    if (values.json) {
      io.out(JSON.stringify(summary));
    } else {
      if (standbyError) io.err(`standby: ${standbyError.message}`);
      io.out(formatSummary(summary));
    }
    return summary.ok ? 0 : 1;
  } finally {
    clearInterval(pinger);
    client?.end();
    await network?.close();
    await passt?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

function tcpLine(tcp: LinuxDemoSummary["tcp"]): string {
  if (!tcp) return "tcp connection         NEVER CARRIED TICKS (the guest's network did not come up)";
  return `tcp connection         ${tcp.open ? "open across the kill" : "BROKEN"}: ${tcp.ticks} ticks (${tcp.ticks_before_kill} before the kill), ` +
    `${tcp.tickGaps} gaps, ${tcp.tickDuplicates} duplicates; ${tcp.echoed} of ${tcp.sent} lines echoed, ${tcp.echoErrors} out of order; ${tcp.badLines} corrupt lines`;
}

function formatSummary(s: LinuxDemoSummary): string {
  const series = (v: SeriesVerdict) => `${v.count} released, ${v.gaps} gaps, ${v.duplicates} duplicates`;
  const disk = s.disk;
  return [
    "",
    `checkpoints            ${s.checkpoints} (pause p50 ${s.pause_ms_p50} ms, p99 ${s.pause_ms_p99} ms)`,
    s.tcp ? `primary killed         after ${s.tcp.ticks_before_kill} ticks reached the client` : `primary killed         after file ${s.last_primary_file} was released`,
    s.failover_ms === null ? "standby                DID NOT TAKE OVER" : `standby took over      detected in ${s.detection_ms} ms, running ${s.failover_ms} ms later${s.tcp === undefined ? `, files continued from ${s.first_standby_file}` : ""}`,
    `heartbeats             ${series(s.heartbeats)}`,
    s.tcp === undefined ? `files                  ${series(s.files)}` : tcpLine(s.tcp),
    disk === null ? "" : `standby disk           e2fsck after the journal replay: ${disk.fsck_clean ? "clean" : `ERRORS\n${disk.fsck_output}`}`,
    disk === null || s.tcp !== undefined ? "" : `released files         ${disk.files_checked} checked: ${disk.files_missing.length} missing, ${disk.files_wrong.length} with other contents`,
    s.ok ? "ok" : "FAILED",
  ].filter((line) => line !== "").join("\n");
}
