/**
 * `npm run bench -- disk-replication`: disks that outlive their host (docs/replication.md, "Disks").
 *
 * - initial_sync_vs_qemu_img_convert: a 1 GiB qcow2 image, 60% allocated, copied in the background
 *   to a standby in another process over TCP loopback (from the start of replication to the first
 *   protected checkpoint, the guest idle), against `qemu-img convert -O qcow2` of the same image on
 *   this machine, alternated in the same run (qemu-img's time / ours: above 1 is faster than it).
 * - pause_during_sync_vs_idle: the guest writing 1% of its pages and a sector per step; the median
 *   pause of the checkpoints taken while the copy ran against those after it.
 * - apply_ms_p50: a standby applying a checkpoint with 1 MiB of disk writes (256 random 4 KiB
 *   blocks) into its qcow2 image through the journal, durable when it returns (in this process).
 * - rejoin_blocks_vs_written: a standby killed after it was protected; the guest then writes
 *   blocks; a new standby on the same image rejoins: 64 KiB blocks sent / distinct 64 KiB blocks written.
 */

import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createImage, openDisk } from "../host/disk/registry.ts";
import { ReferenceMachine } from "../host/machine/reference-machine.ts";
import { connect } from "../host/protocol/socket-transport.ts";
import { ChangeLog, ChangeLoggedDisk, changeLogPath } from "../host/replication/change-log.ts";
import { DiskReplica, StandbyDisks } from "../host/replication/disk-replica.ts";
import { replicate, type CheckpointStats } from "../host/replication/primary.ts";
import type { Progress } from "./memory.ts";
import { startPeer } from "./peer-process.ts";
import { median } from "./timing.ts";

const GIB = 1 << 30;
const BLOCK = 64 * 1024;
const MEMORY_MIB = 16;

/** A 1 GiB qcow2 image with 60% of its 64 KiB blocks written (seeded), made once. */
function makeSource(path: string, progress: Progress): void {
  createImage(path, "qcow2", { size: GIB });
  const disk = openDisk(path);
  const data = new Uint8Array(BLOCK);
  let x = 12345;
  const next = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
  for (let i = 0; i < data.length; i += 4) data[i] = i & 0xff;
  for (let b = 0; b < GIB / BLOCK; b++) {
    if (next() >= 0.6) continue;
    data[0] = b & 0xff;
    data[1] = b >> 8;
    disk.write(b * BLOCK, data);
    if (b % 2048 === 0) progress(`making the 1 GiB image: ${((100 * b * BLOCK) / GIB).toFixed(0)}%`);
  }
  disk.close();
}

/** One background copy of `source` to a standby process on a fresh image; returns ms and the checkpoints' stats. */
async function sync(source: string, replicaPath: string, guestRuns: boolean): Promise<{ ms: number; stats: CheckpointStats[] }> {
  rmSync(replicaPath, { force: true });
  rmSync(`${replicaPath}.tandem-record`, { force: true });
  rmSync(`${replicaPath}.tandem-journal`, { force: true });
  createImage(replicaPath, "qcow2", { size: GIB });
  const pages = (MEMORY_MIB << 20) / 4096;
  const peer = await startPeer("./disk-replication-peer.ts", [replicaPath, String(MEMORY_MIB), String(Math.round(pages / 100)), "1"], "the standby");
  const image = openDisk(source);
  const disk = new ChangeLoggedDisk(image, ChangeLog.open(changeLogPath(source), image.size));
  const machine = new ReferenceMachine({ memoryBytes: MEMORY_MIB << 20, dirtyPages: Math.round(pages / 100), diskEvery: 1, stepsPerTick: guestRuns ? 1 : 0, tickMs: 2, disk });
  const stats: CheckpointStats[] = [];
  const started = performance.now();
  let protectedAt = 0;
  let after = 0;
  const controller = new AbortController();
  machine.resume();
  const op = replicate(machine, await connect({ port: peer.port }), {
    intervalMs: 25,
    signal: controller.signal,
    onCommitted: (s) => {
      stats.push(s);
      if (s.protected && protectedAt === 0) protectedAt = performance.now();
      if (protectedAt > 0 && ++after >= (guestRuns ? 60 : 1)) controller.abort();
    },
  });
  await op.promise.catch(() => {});
  machine.pause();
  disk.close();
  await peer.result();
  return { ms: protectedAt - started, stats };
}

function convert(source: string, target: string): number {
  rmSync(target, { force: true });
  const started = performance.now();
  const result = spawnSync("qemu-img", ["convert", "-O", "qcow2", source, target]);
  if (result.status !== 0) throw new Error(`qemu-img convert failed: ${result.stderr}`);
  return performance.now() - started;
}

/** p50 of applying 1 MiB of random 4 KiB writes per checkpoint, durably, into a qcow2 replica. */
function applyP50(dir: string): number {
  const path = join(dir, "apply.qcow2");
  createImage(path, "qcow2", { size: GIB });
  const replica = DiskReplica.open(path);
  const disks = new StandbyDisks([replica.disk], [replica]);
  disks.applySync([{ type: "disk-sync-begin", disk: 0, mode: 0, diskSize: GIB, lineage: new Uint8Array(16), since: 0, baseSize: 0, baseIdentity: new Uint8Array(32) }, { type: "disk-sync-done", disk: 0 }]);
  const times: number[] = [];
  const data = new Uint8Array(4096).fill(7);
  for (let checkpoint = 1; checkpoint <= 60; checkpoint++) {
    const writes = Array.from({ length: 256 }, () => ({ offset: Math.floor(Math.random() * (GIB / 4096)) * 4096, data }));
    const started = performance.now();
    disks.applyCheckpoint(new Map([[0, writes]]), checkpoint, 1);
    if (checkpoint > 10) times.push(performance.now() - started);
  }
  replica.close();
  return median(times);
}

/** A standby killed once protected; the guest writes; a new standby on the same image rejoins. */
async function rejoin(source: string, replicaPath: string): Promise<{ sent: number; written: number; mode: string }> {
  const image = openDisk(source);
  const disk = new ChangeLoggedDisk(image, ChangeLog.open(changeLogPath(source), image.size));
  const machine = new ReferenceMachine({ memoryBytes: MEMORY_MIB << 20, dirtyPages: 1, diskEvery: 0, stepsPerTick: 0, disk });
  machine.resume();
  const first = await startPeer("./disk-replication-peer.ts", [replicaPath, String(MEMORY_MIB), "1", "0"], "the standby");
  let protectedSeen = false;
  const op = replicate(machine, await connect({ port: first.port }), { intervalMs: 25, onCommitted: (s) => void (protectedSeen ||= s.protected) });
  while (!protectedSeen) await new Promise((r) => setTimeout(r, 10));
  first.kill();
  await op.promise.catch(() => {});
  // Alone, the guest writes 4 KiB into 1,000 distinct 64 KiB blocks.
  const blocks = new Set<number>();
  while (blocks.size < 1000) blocks.add(Math.floor(Math.random() * (GIB / BLOCK)));
  for (const b of blocks) disk.write(b * BLOCK + 4096, new Uint8Array(4096).fill(9));
  const second = await startPeer("./disk-replication-peer.ts", [replicaPath, String(MEMORY_MIB), "1", "0"], "the standby");
  const controller = new AbortController();
  let stats: CheckpointStats | undefined;
  const again = replicate(machine, await connect({ port: second.port }), {
    intervalMs: 25, signal: controller.signal,
    onCommitted: (s) => {
      stats = s;
      if (s.protected) controller.abort();
    },
  });
  await again.promise.catch(() => {});
  machine.pause();
  disk.close();
  await second.result();
  const copy = stats!.diskCopy[0];
  return { sent: Math.ceil(copy.total / BLOCK), written: blocks.size, mode: copy.mode };
}

export async function runDiskReplicationSuite(progress: Progress): Promise<Record<string, number>> {
  const dir = mkdtempSync(join(tmpdir(), "tandem-bench-diskrep-"));
  try {
    const source = join(dir, "vm.qcow2");
    makeSource(source, progress);
    progress("qemu-img convert (warm-up)");
    convert(source, join(dir, "converted.qcow2"));
    const converts: number[] = [];
    const syncs: number[] = [];
    for (let round = 0; round < 2; round++) {
      progress(`round ${round + 1}: qemu-img convert`);
      converts.push(convert(source, join(dir, "converted.qcow2")));
      progress(`round ${round + 1}: background copy over TCP`);
      syncs.push((await sync(source, join(dir, "replica.qcow2"), false)).ms);
    }
    rmSync(join(dir, "converted.qcow2"), { force: true });
    progress("pause while copying, the guest writing");
    const { stats } = await sync(source, join(dir, "replica.qcow2"), true);
    const during = stats.filter((s) => !s.protected).map((s) => s.pauseMs);
    const idle = stats.filter((s) => s.protected).map((s) => s.pauseMs);
    progress("apply of 1 MiB checkpoints");
    const apply = applyP50(dir);
    progress("rejoin");
    const r = await rejoin(source, join(dir, "replica.qcow2"));
    return {
      initial_sync_vs_qemu_img_convert: median(converts) / median(syncs),
      initial_sync_ms: median(syncs),
      qemu_img_convert_ms: median(converts),
      pause_during_sync_vs_idle: median(during) / median(idle),
      pause_ms_p50_during_sync: median(during),
      pause_ms_p50_idle: median(idle),
      checkpoints_during_sync: during.length,
      apply_ms_p50: apply,
      rejoin_blocks_vs_written: r.sent / r.written,
      rejoin_by_changes: r.mode === "changes" ? 1 : 0,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
