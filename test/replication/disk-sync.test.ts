import { spawnSync } from "node:child_process";
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode } from "../../host/errors.ts";
import { createImage } from "../../host/disk/registry.ts";
import { ReferenceMachine } from "../../host/machine/reference-machine.ts";
import { memoryPair } from "../../host/protocol/transport.ts";
import { FaultyTransport } from "../../host/protocol/faulty-transport.ts";
import { DiskRecordState } from "../../host/replication/disk-record.ts";
import { DiskReplica } from "../../host/replication/disk-replica.ts";
import { replicate, type CheckpointStats } from "../../host/replication/primary.ts";
import { standby } from "../../host/replication/secondary.ts";
import { qemuCheck, qemuTest, runQemu } from "../support/qemu.ts";
import { rejectionCode, until } from "../support/session.ts";
import { WatchedDisk, WritingMachine, makeImage, tempDir } from "./support.ts";

const test = suite("disk replication: background copy into the standby's own image");
const MIB = 1 << 20;

/** `qemu-img compare` of two images: 0 when the guest would read the same bytes from both. */
function compare(a: string, b: string): { status: number; text: string } {
  const result = runQemu("qemu-img", ["compare", a, b]);
  return { status: result.status, text: result.stdout + result.stderr };
}

test("the guest writes the very blocks being copied: the standby ends equal (qemu-img compare) and clean (qemu-img check)", async () => {
  if (!qemuTest("copy ordering")) return;
  const dir = tempDir();
  try {
    const size = 16 * MIB;
    makeImage(join(dir, "vm.qcow2"), size, 0.6, 7);
    createImage(join(dir, "replica.qcow2"), "qcow2", { size });
    const disk = WatchedDisk.over(join(dir, "vm.qcow2"));
    const primary = new WritingMachine({ memoryBytes: 1 << 20, dirtyPages: 4, diskEvery: 0, disk });
    const replica = DiskReplica.open(join(dir, "replica.qcow2"));
    const secondary = new ReferenceMachine({ memoryBytes: 1 << 20, dirtyPages: 4, diskEvery: 0, disk: replica.disk });
    const [a, b] = memoryPair();
    const stats: CheckpointStats[] = [];
    const rep = replicate(primary, a, { intervalMs: 5, diskCopy: { windowBytes: 64 * 1024 }, onCommitted: (s) => stats.push(s) });
    const sb = standby(secondary, b, { disks: [replica], resume: false });
    primary.resume();
    // While the copy runs, the guest keeps writing 4 KiB blocks just behind, at and just ahead of
    // what the copy last read: writes racing the copy in both orders.
    let raced = 0;
    let stamp = 0;
    const writer = setInterval(() => {
      for (let i = 0; i < 8; i++) {
        const at = Math.max(0, Math.min(size - 4096, disk.lastRead + (Math.floor(Math.random() * 48) - 16) * 4096));
        const data = new Uint8Array(4096).fill(++stamp & 0xff);
        data[0] = stamp >> 8;
        if (primary.guestWrite(at - (at % 4096), data)) raced++;
      }
    }, 1);
    await until(() => stats.some((s) => s.protected), 60_000);
    const firstProtected = stats.find((s) => s.protected)!;
    assert.is(firstProtected.diskCopy[0].mode, "full", "a new replica gets a full copy");
    assert.ok(stats.filter((s) => !s.protected).length > 3, "there were checkpoints while the copy ran (the guest was not stopped for it)");
    assert.ok(rep.progress.copyTotal > 0 && rep.progress.copied === rep.progress.copyTotal, `progress reached the total: ${JSON.stringify(rep.progress)}`);
    clearInterval(writer);
    primary.pause();
    const after = stats.length;
    await until(() => stats.length >= after + 2, 10_000); // the last writes have travelled
    rep.abort();
    assert.is(await rejectionCode(rep.promise), ErrorCode.Aborted);
    const result = await sb.promise;
    assert.is(result.outcome, "stopped");
    assert.ok(raced > 100, `the guest wrote ${raced} blocks around the copy`);
    const record = replica.record;
    assert.is(record.state, DiskRecordState.Replica, "the record says the image is a replica");
    replica.close();
    disk.close();
    const check = qemuCheck(join(dir, "replica.qcow2"));
    assert.is(check.status, 0, `qemu-img check: ${JSON.stringify(check.report)}`);
    const same = compare(join(dir, "vm.qcow2"), join(dir, "replica.qcow2"));
    assert.is(same.status, 0, `qemu-img compare: ${same.text}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a standby that loses its primary before the copy is complete does not take over, and says why; the primary runs on", async () => {
  const dir = tempDir();
  try {
    const size = 8 * MIB;
    makeImage(join(dir, "vm.qcow2"), size, 0.9, 3);
    createImage(join(dir, "replica.qcow2"), "qcow2", { size });
    const disk = WatchedDisk.over(join(dir, "vm.qcow2"));
    const primary = new WritingMachine({ memoryBytes: 1 << 20, dirtyPages: 4, diskEvery: 0, disk });
    const replica = DiskReplica.open(join(dir, "replica.qcow2"));
    const secondary = new ReferenceMachine({ memoryBytes: 1 << 20, dirtyPages: 4, diskEvery: 0, disk: replica.disk });
    const [a, b] = memoryPair();
    const wire = new FaultyTransport(a, { cutAfter: 2 * MIB }); // the connection dies a quarter into the copy
    const stats: CheckpointStats[] = [];
    const rep = replicate(primary, wire, { intervalMs: 5, diskCopy: { windowBytes: 64 * 1024 }, onCommitted: (s) => stats.push(s) });
    const sb = standby(secondary, b, { disks: [replica], resume: false, heartbeatTimeoutMs: 200 });
    primary.resume();
    const outcome = await sb.promise.then((r) => r, (e: Error & { code?: string }) => e);
    assert.instance(outcome, Error);
    const error = outcome as Error & { code?: string };
    assert.is(error.code, ErrorCode.PeerLost);
    assert.match(error.message, /not protected|before the pair was protected/);
    assert.match(error.message, /full copy had [\d.]+ MiB applied/);
    assert.is(await rejectionCode(rep.promise), ErrorCode.PeerLost);
    assert.ok(stats.length > 0 && stats.every((s) => !s.protected), "the primary never reported the pair protected");
    assert.ok(primary.running, "the primary keeps running alone");
    primary.pause();
    assert.is(replica.record.state, DiskRecordState.Copying, "the record says a copy was interrupted");
    replica.close();
    disk.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** Runs a primary whose standby's image fails (`replica` opened by the test), and returns both outcomes. */
async function failingStandby(dir: string, replica: DiskReplica) {
  const size = replica.disk.size;
  const disk = WatchedDisk.over(join(dir, "vm.qcow2"));
  const primary = new WritingMachine({ memoryBytes: 1 << 20, dirtyPages: 4, diskEvery: 0, disk });
  const secondary = new ReferenceMachine({ memoryBytes: 1 << 20, dirtyPages: 4, diskEvery: 0, disk: replica.disk });
  const [a, b] = memoryPair();
  const rep = replicate(primary, a, { intervalMs: 5, diskCopy: { windowBytes: 256 * 1024 } });
  const sb = standby(secondary, b, { disks: [replica], resume: false });
  primary.resume();
  const standbyError = await sb.promise.then(() => undefined, (e: Error & { code?: string }) => e);
  const primaryCode = await rejectionCode(rep.promise);
  const running = primary.running;
  primary.pause();
  disk.close();
  return { standbyError, primaryCode, running, size };
}

test("a full disk on the standby (ENOSPC): a clear error there, and the primary runs on, unprotected", async () => {
  const dir = tempDir();
  const small = join(dir, "small");
  mkdirSync(small);
  // A tmpfs too small for the copy (mounting needs root; skipped clearly without it).
  const mounted = spawnSync("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", small]).status === 0;
  try {
    if (!mounted) {
      console.log("  (skipped the ENOSPC test: cannot mount a small tmpfs here; it needs root)");
      return;
    }
    makeImage(join(dir, "vm.qcow2"), 8 * MIB, 0.6, 9);
    createImage(join(small, "replica.qcow2"), "qcow2", { size: 8 * MIB });
    const replica = DiskReplica.open(join(small, "replica.qcow2"));
    const { standbyError, primaryCode, running } = await failingStandby(dir, replica).finally(() => {
      try {
        replica.close();
      } catch (error) {
        assert.is((error as { code?: string }).code, ErrorCode.DiskIo, "closing an image on a full disk may fail, as E_DISK_IO"); // its metadata has no room either
      }
    });
    assert.instance(standbyError, Error);
    assert.is(standbyError!.code, ErrorCode.DiskIo, standbyError!.message);
    assert.match(standbyError!.message, /ENOSPC|no space/i);
    assert.match(standbyError!.message, /not standing by any more/);
    assert.ok(primaryCode === ErrorCode.Failed || primaryCode === ErrorCode.PeerLost, `the primary's replication ended with ${primaryCode}`);
    assert.ok(running, "the primary keeps running, alone");
  } finally {
    if (mounted) spawnSync("umount", [small]);
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a read-only standby image: a clear error there, and the primary runs on, unprotected", async () => {
  const dir = tempDir();
  try {
    makeImage(join(dir, "vm.qcow2"), 4 * MIB, 0.6, 4);
    createImage(join(dir, "replica.qcow2"), "qcow2", { size: 4 * MIB });
    const replica = DiskReplica.open(join(dir, "replica.qcow2"), { readOnly: true });
    const { standbyError, primaryCode, running } = await failingStandby(dir, replica);
    assert.instance(standbyError, Error);
    assert.is(standbyError!.code, ErrorCode.DiskReadOnly, standbyError!.message);
    assert.match(standbyError!.message, /read-only/);
    assert.ok(primaryCode === ErrorCode.Failed || primaryCode === ErrorCode.PeerLost, `the primary's replication ended with ${primaryCode}`);
    assert.ok(running, "the primary keeps running, alone");
    replica.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
