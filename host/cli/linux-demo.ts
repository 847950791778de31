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
 */

import { spawn } from "node:child_process";
import { copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { checkLinuxDisk, type LinuxDiskVerdict } from "../guests/linux-disk-check.ts";
import { LinuxLog, type SeriesVerdict } from "../guests/linux-log.ts";
import { linuxGuestFiles } from "../guests/linux-guest.ts";
import { listen, type SocketTransport } from "../protocol/socket-transport.ts";
import type { ReleasedOutput } from "../replication/primary.ts";
import { standby, type StandbyResult } from "../replication/secondary.ts";
import { selfCommand } from "../runtime/self-command.ts";
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
  error?: string;
  ok: boolean;
}

/** What the Linux demo takes (the demo's own options). */
export interface LinuxDemoValues extends GuestValues {
  interval: number;
  duration: number;
  "kill-after": number;
  json: boolean;
}

/** Booting with no snapshot yet takes minutes on a loaded machine; after that, seconds. */
const STARTUP_LIMIT_MS = 15 * 60_000;

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
  try {
    // The outside world: each seq once.
    const world = new Map<number, string>();
    let conflicts = 0;
    const fromPrimary = new LinuxLog();
    const fromStandby = new LinuxLog();
    const take = (o: ReleasedOutput | { seq: number; text: string }, standbyReleased: boolean) => {
      const text = "text" in o ? o.text : new TextDecoder().decode(o.data);
      if (world.has(o.seq) && world.get(o.seq) !== text) conflicts++;
      world.set(o.seq, text);
      (standbyReleased ? fromStandby : fromPrimary).see(text);
      if (!values.json && !tty) io.out(text.replace(/\r?\n$/, ""));
    };

    const guest = await guestFrom({ ...values, disk: standbyDisk }, { role: "receives" });
    const machine = guest.machine;
    let accept!: (t: SocketTransport) => void;
    const accepted = new Promise<SocketTransport>((resolve) => (accept = resolve));
    const server = await listen({ port: 0 }, (t) => accept(t));
    const port = "port" in server.address ? server.address.port : 0;

    const script = fileURLToPath(new URL(import.meta.url.endsWith(".ts") ? "./main.ts" : "./main.js", import.meta.url));
    const [command, ...rest] = selfCommand(script, [
      "primary", "--connect", `127.0.0.1:${port}`, "--json", "--interval", String(values.interval), ...guest.args, "--disk", primaryDisk,
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
    const startupLimit = setTimeout(() => child.kill("SIGKILL"), STARTUP_LIMIT_MS);
    void firstCheckpoint.then(() => {
      clearTimeout(startupLimit);
      killer = setTimeout(() => {
        killedAt = performance.now();
        child.kill("SIGKILL");
      }, killAfter);
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
    if (tookOver) await new Promise((r) => setTimeout(r, Math.max(duration - killAfter, 1000)));
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
      ...(standbyError ? { error: standbyError.message } : {}),
      ok: false,
    };
    summary.ok = !standbyError && tookOver && summary.checkpoints > 0 && heartbeats.count > 0 && heartbeats.gaps === 0 && heartbeats.duplicates === 0 &&
      fileSeries.count > 0 && fileSeries.gaps === 0 && summary.files.duplicates === 0 && disk !== null && disk.ok;
    if (values.json) {
      io.out(JSON.stringify(summary));
    } else {
      if (standbyError) io.err(`standby: ${standbyError.message}`);
      io.out(formatSummary(summary));
    }
    return summary.ok ? 0 : 1;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function formatSummary(s: LinuxDemoSummary): string {
  const series = (v: SeriesVerdict) => `${v.count} released, ${v.gaps} gaps, ${v.duplicates} duplicates`;
  const disk = s.disk;
  return [
    "",
    `checkpoints            ${s.checkpoints} (pause p50 ${s.pause_ms_p50} ms, p99 ${s.pause_ms_p99} ms)`,
    `primary killed         after file ${s.last_primary_file} was released`,
    s.failover_ms === null ? "standby                DID NOT TAKE OVER" : `standby took over      detected in ${s.detection_ms} ms, running ${s.failover_ms} ms later, files continued from ${s.first_standby_file}`,
    `heartbeats             ${series(s.heartbeats)}`,
    `files                  ${series(s.files)}`,
    disk === null ? "" : `standby disk           e2fsck after the journal replay: ${disk.fsck_clean ? "clean" : `ERRORS\n${disk.fsck_output}`}`,
    disk === null ? "" : `released files         ${disk.files_checked} checked: ${disk.files_missing.length} missing, ${disk.files_wrong.length} with other contents`,
    s.ok ? "ok" : "FAILED",
  ].filter((line) => line !== "").join("\n");
}
