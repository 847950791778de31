/**
 * `npm run bench -- linux`: tandem's Linux guest (guest/linux/, Debian's i386 kernel in v86 at
 * 128 MiB), from its boot snapshot, idle and under its file workload.
 *
 * For each workload, side by side in one run (the machine is shared and noisy: only ratios
 * within a run mean much): the guest runs WINDOW_S seconds alone, then WINDOW_S seconds
 * replicated every INTERVAL_MS to a standby in another process (replication-peer.ts linux) over
 * TCP loopback. Each window opens at the first line the guest prints once it runs (alone) or
 * once its first checkpoint, the whole disk and RAM, is acknowledged (replicated); the first
 * WARMUP checkpoints are left out of the pause figures.
 *
 * Metrics:
 * - pause_ms_p50_linux, pause_ms_p99_linux: CheckpointStats.pauseMs under the file workload
 *   (the _idle ones: idle); checkpoint_bytes_p50_linux(_idle): stream bytes per checkpoint;
 *   first_checkpoint_bytes_linux;
 * - files_per_s_alone_linux, files_per_s_replicated_linux: the guest's own progress (files it
 *   wrote and fsynced, as its released lines say) over the same wall time, and their ratio,
 *   progress_replicated_vs_alone_linux: how much of the guest's speed replication leaves;
 * - boot_ms_from_snapshot_linux: building the machine and restoring the boot snapshot (median
 *   of the runs), against boot_ms_cold_linux when this run had to boot and save the snapshot.
 * The released lines are checked: no gap, no duplicate.
 */

import { copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openDisk } from "../host/disk/registry.ts";
import { percentile } from "../host/cli/pause-stats.ts";
import { bootLinux, linuxGuestFiles, linuxMachineOptions, startWorkload, LINUX_MEMORY_BYTES, type LinuxGuestFiles, type LinuxWorkload } from "../host/guests/linux-guest.ts";
import { LinuxLog } from "../host/guests/linux-log.ts";
import { connect } from "../host/protocol/socket-transport.ts";
import { replicate } from "../host/replication/primary.ts";
import type { Progress } from "./memory.ts";
import { startPeer } from "./peer-process.ts";
import { median } from "./timing.ts";

const WINDOW_S = 20;
const INTERVAL_MS = 50;
const WARMUP = 3;
const FIRST_ACK_TIMEOUT_MS = 300_000;

interface RunResult {
  /** Files (or, idle, heartbeats) released within the window. */
  progress: number;
  bootMs: number;
  fromSnapshot: boolean;
  pauses: number[];
  bytes: number[];
  firstBytes: number;
}


/** Lines of `log` that count as progress for `workload`. */
function progressOf(log: LinuxLog, workload: LinuxWorkload): number {
  return workload === "files" ? log.fileNumbers.length : log.heartbeats.length;
}

function checkSeries(log: LinuxLog, what: string): void {
  for (const [name, v] of [["heartbeats", log.heartbeatVerdict()], ["files", log.fileVerdict()]] as const) {
    if (v.gaps > 0 || v.duplicates > 0) throw new Error(`linux bench (${what}): ${name} ${JSON.stringify(v)}`);
  }
}

async function run(files: LinuxGuestFiles, dir: string, workload: LinuxWorkload, replicated: boolean, progress: Progress): Promise<RunResult> {
  const label = `${workload}, ${replicated ? "replicated" : "alone"}`;
  const primaryImage = join(dir, "primary.img");
  copyFileSync(files.dataImage, primaryImage);
  const disk = openDisk(primaryImage, { format: "raw" });
  progress(`${label}: restoring the boot snapshot`);
  const booted = await bootLinux(files, "bzimage", linuxMachineOptions(files, "bzimage", { data: disk }, LINUX_MEMORY_BYTES), {
    onBootLine: () => progress(`${label}: booting (no snapshot yet)`),
  });
  const machine = booted.machine;
  const log = new LinuxLog();
  // The window opens at the first line the guest prints once running (alone) or once its first
  // checkpoint is acknowledged (replicated): a guest just restored from the snapshot takes a
  // moment to get going, which neither run should count.
  let armed = false;
  let counting = false;
  let windowEnd!: () => void;
  const windowClosed = new Promise<void>((resolve) => (windowEnd = resolve));
  const windowLog = new LinuxLog();
  const see = (text: string) => {
    log.see(text);
    if (armed && !counting) {
      counting = true;
      setTimeout(() => {
        counting = false;
        windowEnd();
      }, WINDOW_S * 1000);
      return;
    }
    if (counting) windowLog.see(text);
  };
  const pauses: number[] = [];
  const bytes: number[] = [];
  let firstBytes = 0;
  try {
    startWorkload(machine, workload);
    if (!replicated) {
      machine.onOutput((o) => see(new TextDecoder().decode(o.data)));
      armed = true;
      machine.resume();
      await windowClosed;
      machine.pause();
    } else {
      const standbyImage = join(dir, "standby.img");
      copyFileSync(files.dataImage, standbyImage);
      const standby = await startPeer("./replication-peer.ts", ["linux", String(LINUX_MEMORY_BYTES >>> 20), standbyImage], "the Linux standby");
      try {
        const transport = await connect({ host: "127.0.0.1", port: standby.port });
        let acknowledged!: () => void;
        const firstAck = new Promise<void>((resolve) => (acknowledged = resolve));
        const op = replicate(machine, transport, {
          intervalMs: INTERVAL_MS,
          sender: { responseTimeoutMs: FIRST_ACK_TIMEOUT_MS },
          release: (o) => see(new TextDecoder().decode(o.data)),
          onCommitted: (s) => {
            if (s.checkpoint === 1) {
              firstBytes = s.bytes;
              acknowledged();
            } else if (s.checkpoint > WARMUP && counting) {
              pauses.push(s.pauseMs);
              bytes.push(s.bytes);
            }
            if (s.checkpoint % 20 === 0) progress(`${label}: checkpoint ${s.checkpoint}`);
          },
        });
        const failed = op.promise.then(() => {}, (error: Error) => { throw error; });
        await Promise.race([firstAck, failed]);
        armed = true;
        await Promise.race([windowClosed, failed]);
        op.abort("the bench is done");
        await op.promise.catch(() => {});
        transport.close();
        const taken = await standby.result<{ outcome?: string }>();
        if (taken.outcome !== "stopped") throw new Error(`linux bench: the standby did not stand down (${JSON.stringify(taken)})`);
      } catch (error) {
        standby.kill();
        throw error;
      }
    }
    checkSeries(log, label);
    return { progress: progressOf(windowLog, workload), bootMs: booted.bootMs, fromSnapshot: booted.fromSnapshot, pauses, bytes, firstBytes };
  } finally {
    await machine.destroy();
    disk.close();
  }
}

/** Runs the Linux suite; returns its metrics. */
export async function runLinuxSuite(progress: Progress): Promise<Record<string, number>> {
  const files = linuxGuestFiles();
  const dir = mkdtempSync(join(tmpdir(), "tandem-bench-linux-"));
  try {
    const metrics: Record<string, number> = {};
    const snapshotBoots: number[] = [];
    for (const workload of ["files", "idle"] as const) {
      const alone = await run(files, dir, workload, false, progress);
      const replicated = await run(files, dir, workload, true, progress);
      for (const r of [alone, replicated]) {
        if (r.fromSnapshot) snapshotBoots.push(r.bootMs);
        else metrics.boot_ms_cold_linux = r.bootMs;
      }
      const suffix = workload === "files" ? "_linux" : "_linux_idle";
      metrics[`pause_ms_p50${suffix}`] = median(replicated.pauses);
      metrics[`pause_ms_p99${suffix}`] = percentile(replicated.pauses, 0.99);
      metrics[`checkpoint_bytes_p50${suffix}`] = median(replicated.bytes);
      metrics[`checkpoints${suffix}`] = replicated.pauses.length;
      if (workload === "files") {
        metrics.first_checkpoint_bytes_linux = replicated.firstBytes;
        metrics.files_per_s_alone_linux = alone.progress / WINDOW_S;
        metrics.files_per_s_replicated_linux = replicated.progress / WINDOW_S;
        metrics.progress_replicated_vs_alone_linux = alone.progress > 0 ? replicated.progress / alone.progress : 0;
      } else {
        metrics.heartbeats_per_s_alone_linux_idle = alone.progress / WINDOW_S;
        metrics.heartbeats_per_s_replicated_linux_idle = replicated.progress / WINDOW_S;
      }
    }
    metrics.boot_ms_from_snapshot_linux = median(snapshotBoots);
    metrics.window_s_linux = WINDOW_S;
    metrics.interval_ms_linux = INTERVAL_MS;
    return metrics;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
