/**
 * `npm run bench -- replication`: continuous replication of the reference machine (256 MiB of RAM)
 * to a standby in another process over TCP loopback.
 *
 * For each dirty level (0.1%, 1%, 10% of pages per epoch) the guest takes exactly one step per
 * checkpoint, writing that share of its pages, and the primary checkpoints back to back
 * (interval 0): pause_ms is how long the guest stood still per checkpoint, checkpoints_per_s the
 * rate sustained over the measured checkpoints, capture_gbps_10pct the median of dirty bytes per
 * second of pause at 10%. capture_vs_memcpy_10pct: the capture alone against a memcpy of its
 * bytes, side by side in this process (bench/capture.ts). failover_ms: after the 1% run the primary's
 * connection is destroyed (its death, as the standby sees it); the standby reports the time from
 * noticing that to its machine running. migration: an idle 256 MiB guest migrated to a
 * destination in another process; total time, and downtime from the stop to the destination
 * running.
 */

import { ReferenceMachine } from "../host/machine/reference-machine.ts";
import { connect } from "../host/protocol/socket-transport.ts";
import { migrate } from "../host/replication/migrate.ts";
import { replicate } from "../host/replication/primary.ts";
import { captureVsMemcpy } from "./capture.ts";
import type { Progress } from "./memory.ts";
import { startPeer } from "./peer-process.ts";
import { median } from "./timing.ts";

const MIB = 256;
const PAGES = (MIB << 20) / 4096;
const WARMUP = 10;

/** What replication-peer.ts reports when its standby ends. */
interface StandbyReport {
  failoverMs?: number;
  reason?: string;
}

/** A reference-machine standby in its own process. */
function peer(dirty: number) {
  return startPeer("./replication-peer.ts", [String(MIB), String(dirty)], "the standby");
}
const MEASURED = 100;

async function level(fraction: number, progress: Progress): Promise<{ p50: number; p99: number; rate: number; gbps: number; failoverMs?: number }> {
  const dirty = Math.max(1, Math.round(PAGES * fraction));
  const { port, result } = await peer(dirty);
  const machine = new ReferenceMachine({ memoryBytes: MIB << 20, dirtyPages: dirty, stepsPerTick: 0 });
  const transport = await connect({ port });
  const pauses: number[] = [];
  const rates: number[] = []; // dirty bytes captured per ms of pause
  let startedAt = 0;
  let done!: () => void;
  const finished = new Promise<void>((resolve) => (done = resolve));
  const op = replicate(machine, transport, {
    intervalMs: 0,
    onCommitted: (s) => {
      if (s.checkpoint === WARMUP) startedAt = performance.now();
      if (s.checkpoint > WARMUP) {
        pauses.push(s.pauseMs);
        rates.push((s.pages * 4096) / s.pauseMs);
      }
      progress(`replication at ${fraction * 100}% dirty, checkpoint ${s.checkpoint}/${WARMUP + MEASURED}`);
      if (s.checkpoint === WARMUP + MEASURED) done();
      machine.step(1); // the next epoch dirties exactly `dirty` pages
    },
  });
  await finished;
  const rate = MEASURED / ((performance.now() - startedAt) / 1000);
  transport.close(); // the primary "dies": its connection goes
  await op.promise.catch(() => {});
  machine.pause();
  const standbyResult = await result<StandbyReport>();
  pauses.sort((a, b) => a - b);
  return {
    p50: pauses[Math.floor(pauses.length / 2)], p99: pauses[Math.floor(pauses.length * 0.99)], rate,
    gbps: median(rates) / 1e6, failoverMs: standbyResult.failoverMs,
  };
}

async function migration(progress: Progress): Promise<{ totalMs: number; downtimeMs: number }> {
  progress("migrating an idle 256 MiB guest");
  const { port, result } = await peer(1);
  const machine = new ReferenceMachine({ memoryBytes: MIB << 20, dirtyPages: 1, stepsPerTick: 0 });
  machine.step(100); // a few pages and sectors worth copying
  const transport = await connect({ port });
  const migrated = await migrate(machine, transport).promise;
  const taken = await result<StandbyReport>();
  if (taken.reason !== "handover") throw new Error(`migration bench: the destination did not take over (${JSON.stringify(taken)})`);
  return { totalMs: migrated.totalMs, downtimeMs: migrated.downtimeMs };
}

/** Runs the replication suite; returns its metrics. */
export async function runReplicationSuite(progress: Progress): Promise<Record<string, number>> {
  const metrics: Record<string, number> = {};
  for (const [name, fraction] of [["0_1pct", 0.001], ["1pct", 0.01], ["10pct", 0.1]] as const) {
    const r = await level(fraction, progress);
    metrics[`pause_ms_p50_${name}`] = r.p50;
    metrics[`pause_ms_p99_${name}`] = r.p99;
    metrics[`checkpoints_per_s_${name}`] = r.rate;
    if (name === "10pct") metrics.capture_gbps_10pct = r.gbps;
    if (name === "1pct" && r.failoverMs !== undefined) metrics.failover_ms = r.failoverMs;
  }
  Object.assign(metrics, captureVsMemcpy(progress));
  const m = await migration(progress);
  metrics.migration_downtime_ms = m.downtimeMs;
  metrics.migration_total_ms = m.totalMs;
  return metrics;
}
