/**
 * `npm run bench -- witness`: what the witness costs (docs/replication.md, "The witness").
 *
 * - takeover_ms_p50, fenced_ms_p50: `tandem demo --witness --guest reference` three times; from
 *   the cut that partitions the primary (from etcd and its standby) to the standby running the
 *   guest, and to the primary fencing itself. Aim: takeover ≤ the lease TTL (2 s) + 100 ms.
 * - release_ns_with_lease, release_ns_without: one output through the release gate, with the
 *   lease checked on every release (a real lease held in a local etcd) and without a lease,
 *   alternated in rounds in this run; release_with_vs_without is their ratio.
 * - checkpoint_rate_with_vs_without: checkpoints per second of the reference machine replicated
 *   in this process, its gate checking a real lease, against the same without one, alternated.
 *   Aim: no measurable change (1.0 within noise).
 */

import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { WitnessDemoSummary } from "../host/cli/witness-demo.ts";
import { ReferenceMachine } from "../host/machine/reference-machine.ts";
import { memoryPair } from "../host/protocol/transport.ts";
import { replicate } from "../host/replication/primary.ts";
import { ReleaseGate, type ReleaseLease } from "../host/replication/release-gate.ts";
import { standby } from "../host/replication/secondary.ts";
import { selfCommand } from "../host/runtime/self-command.ts";
import { startLocalEtcd } from "../host/witness/local-etcd.ts";
import { Witness } from "../host/witness/witness.ts";
import type { Progress } from "./memory.ts";
import { median } from "./timing.ts";

const MAIN = fileURLToPath(new URL("../host/cli/main.ts", import.meta.url));

function demoOnce(): WitnessDemoSummary {
  const [command, ...args] = selfCommand(MAIN, ["demo", "--witness", "--guest", "reference", "--memory", "4", "--duration", "3", "--kill-after", "1", "--json"]);
  const run = spawnSync(command, args, { encoding: "utf8", timeout: 180_000 });
  const summary = JSON.parse(run.stdout.trim().split("\n").at(-1) ?? "{}") as WitnessDemoSummary;
  if (!summary.ok) throw new Error(`demo --witness failed: ${run.stdout.slice(-500)} ${run.stderr.slice(-1000)}`);
  return summary;
}

/** Nanoseconds per output through a gate. */
function releaseNs(lease: ReleaseLease | undefined, outputs: number): number {
  let released = 0;
  const gate = new ReleaseGate(() => void released++, { lease });
  const data = new Uint8Array(16);
  const started = performance.now();
  for (let seq = 1; seq <= outputs; seq++) gate.pass({ seq, channel: "serial0", data });
  const ns = ((performance.now() - started) * 1e6) / outputs;
  if (released !== outputs) throw new Error(`the gate released ${released} of ${outputs}`);
  return ns;
}

/** Checkpoints per second over `ms` of the reference machine replicated in this process. */
async function checkpointRate(lease: ReleaseLease | undefined, ms: number): Promise<number> {
  const primary = new ReferenceMachine({ memoryBytes: 4 << 20, dirtyPages: 40, tickMs: 1 });
  const secondary = new ReferenceMachine({ memoryBytes: 4 << 20, dirtyPages: 40, tickMs: 1 });
  const [a, b] = memoryPair();
  const controller = new AbortController();
  let checkpoints = 0;
  primary.resume();
  const gate = new ReleaseGate(() => {}, { lease });
  const op = replicate(primary, a, { intervalMs: 10, gate, signal: controller.signal, onCommitted: () => void checkpoints++ });
  const sb = standby(secondary, b, { heartbeatTimeoutMs: 5000, resume: false, release: () => {} });
  await new Promise((resolve) => setTimeout(resolve, 300)); // warm up
  const before = checkpoints;
  const started = performance.now();
  await new Promise((resolve) => setTimeout(resolve, ms));
  const rate = ((checkpoints - before) * 1000) / (performance.now() - started);
  controller.abort();
  await op.promise.catch(() => {});
  await sb.promise.catch(() => {});
  primary.pause();
  secondary.pause();
  return rate;
}

export async function runWitnessSuite(progress: Progress): Promise<Record<string, number>> {
  const takeovers: number[] = [];
  const fences: number[] = [];
  for (let i = 0; i < 3; i++) {
    progress(`demo --witness, run ${i + 1} of 3`);
    const summary = demoOnce();
    takeovers.push(summary.takeover_ms!);
    fences.push(summary.fenced_ms!);
  }
  progress("a lease in a local etcd");
  const etcd = await startLocalEtcd();
  try {
    const ownership = await new Witness({ endpoints: etcd.endpoints, guest: `bench-${process.pid}-${Date.now()}`, side: "bench" }).claimFresh();
    try {
      const lease: ReleaseLease = { valid: () => ownership.valid() };
      const withLease: number[] = [];
      const without: number[] = [];
      releaseNs(lease, 200_000); // warm up
      releaseNs(undefined, 200_000);
      for (let round = 0; round < 9; round++) {
        progress(`release gate, round ${round + 1} of 9`);
        if (round % 2 === 0) {
          withLease.push(releaseNs(lease, 500_000));
          without.push(releaseNs(undefined, 500_000));
        } else {
          without.push(releaseNs(undefined, 500_000));
          withLease.push(releaseNs(lease, 500_000));
        }
      }
      const ratesWith: number[] = [];
      const ratesWithout: number[] = [];
      for (let round = 0; round < 4; round++) {
        progress(`checkpoint rate, round ${round + 1} of 4`);
        const order = round % 2 === 0 ? [lease, undefined] : [undefined, lease];
        for (const l of order) (l ? ratesWith : ratesWithout).push(await checkpointRate(l, 1500));
      }
      return {
        takeover_ms_p50: median(takeovers),
        fenced_ms_p50: median(fences),
        release_ns_with_lease: median(withLease),
        release_ns_without: median(without),
        release_with_vs_without: median(withLease) / median(without),
        checkpoint_rate_with_vs_without: median(ratesWith) / median(ratesWithout),
        checkpoints_per_s_with_lease: median(ratesWith),
      };
    } finally {
      await ownership.release().catch(() => {});
      ownership.close();
    }
  } finally {
    await etcd.stop();
  }
}
