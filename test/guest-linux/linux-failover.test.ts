import { createHash } from "node:crypto";
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { openDisk } from "../../host/disk/registry.ts";
import type { Disk } from "../../host/disk/disk.ts";
import { V86Machine } from "../../host/emulators/v86/v86-machine.ts";
import { checkLinuxDisk } from "../../host/guests/linux-disk-check.ts";
import { bootLinux, linuxMachineOptions, startWorkload, type LinuxBoot, type LinuxDrives, type LinuxGuestFiles } from "../../host/guests/linux-guest.ts";
import { LinuxLog } from "../../host/guests/linux-log.ts";
import { seededRandom } from "../../host/prng.ts";
import { memoryPair } from "../../host/protocol/transport.ts";
import { replicate, type ReleasedOutput } from "../../host/replication/primary.ts";
import { standby } from "../../host/replication/secondary.ts";
import { runtimeName } from "../../host/runtime/runtime.ts";
import { linuxGuestOrSkip } from "../support/linux.ts";
import { until } from "../support/session.ts";

const test = suite("Linux guest: Debian's i386 kernel in v86 (a bzImage, or SeaBIOS booting a disk or a CD-ROM), replicated, its primary killed at a random moment, its files intact on the standby");
const long = globalThis.process?.env?.TANDEM_LONG_TESTS === "1";
/**
 * The BIOS disk and CD-ROM boots fail over on Node by default and on every runtime in the long
 * mode: a takeover that then stalls with no output was seen once in about ten (on Node and on
 * Bun, cause not yet found; docs/embedding.md), and the default suite runs each once.
 */
const biosBootsHere = long || runtimeName() === "node";
/** The first boot (no snapshot yet) takes minutes on a loaded 2-core machine; later runs restore in seconds. */
const BOOT_TIMEOUT_MS = 900_000;

/**
 * One failover: the primary, booted as `boot` says and restored from that boot's snapshot, runs the file workload, replicated
 * every 50 ms to a standby in this process; `killAfterMs` after the first checkpoint the
 * primary's connection breaks and it stops, as if killed. Returns what the outside world saw.
 */
async function failover(files: LinuxGuestFiles, dir: string, killAfterMs: number, trial: number, boot: LinuxBoot = "bzimage"): Promise<void> {
  const label = `${boot} trial ${trial} (killed ${killAfterMs} ms after the first checkpoint)`;
  const primaryImage = join(dir, `primary-${trial}.img`);
  const standbyImage = join(dir, `standby-${trial}.img`);
  copyFileSync(files.dataImage, primaryImage);
  copyFileSync(files.dataImage, standbyImage);
  const disks: Disk[] = [openDisk(primaryImage, { format: "raw" }), openDisk(standbyImage, { format: "raw" })];
  // Each side opens the boot image read-only for itself, as it would on its own host.
  const bootImages: Disk[] = [];
  const drives = (data: Disk): LinuxDrives => {
    if (boot === "bzimage") return { data };
    const image = openDisk(boot === "disk" ? files.bootDisk : files.bootIso, { format: "raw", readOnly: true });
    bootImages.push(image);
    return boot === "disk" ? { data, bootDisk: image } : { data, cdrom: image };
  };
  const booted = await bootLinux(files, boot, linuxMachineOptions(files, boot, drives(disks[0])), { timeoutMs: BOOT_TIMEOUT_MS });
  const primary = booted.machine;
  const secondary = await V86Machine.create(linuxMachineOptions(files, boot, drives(disks[1])));
  assert.equal([primary.disks.length, secondary.disks.length], [1, 1], `${label}: only the data disk is written; the boot image is read-only`);
  try {
    const world = new Map<number, string>();
    let killed = false;
    const take = (o: ReleasedOutput) => {
      const text = new TextDecoder().decode(o.data);
      assert.ok(!world.has(o.seq) || world.get(o.seq) === text, `${label}: seq ${o.seq} twice with different bytes`);
      world.set(o.seq, text);
    };
    const [a, b] = memoryPair();
    startWorkload(primary, "files");
    let firstCheckpoint!: () => void;
    const replicating = new Promise<void>((resolve) => (firstCheckpoint = resolve));
    const rep = replicate(primary, a, {
      intervalMs: 50,
      release: (o) => {
        if (!killed) take(o);
      },
      onCommitted: () => firstCheckpoint(),
    });
    const sb = standby(secondary, b, { heartbeatTimeoutMs: 500, release: take });
    await replicating;
    await new Promise((resolve) => setTimeout(resolve, killAfterMs));
    killed = true;
    primary.pause();
    a.fail(new Error("the primary was killed"));
    await rep.promise.catch(() => {});
    primary.pause(); // the engine may have resumed it while winding down: a killed primary runs no more
    const result = await sb.promise;
    assert.is(result.outcome, "takeover", `${label}`);
    const releasedAtKill = new LinuxLog();
    for (const seq of [...world.keys()].sort((x, y) => x - y)) releasedAtKill.see(world.get(seq)!);
    // The standby goes on: three more files written and released after the takeover.
    const target = releasedAtKill.fileVerdict().last + 3;
    const releasedNow = () => {
      const log = new LinuxLog();
      for (const seq of [...world.keys()].sort((x, y) => x - y)) log.see(world.get(seq)!);
      return log;
    };
    await until(() => releasedNow().fileVerdict().last >= target, 300_000).catch(() => {
      const seqs = [...world.keys()].sort((x, y) => x - y);
      assert.unreachable(`${label}: the standby released no file ${target} within 300 s; the last outputs: ${JSON.stringify(seqs.slice(-8).map((q) => world.get(q)))}`);
    });
    secondary.pause();
    const seqs = [...world.keys()].sort((x, y) => x - y);
    assert.ok(seqs.every((seq, i) => seq === i + 1), `${label}: output seqs 1..${seqs.length} once each`);
    const log = new LinuxLog();
    for (const seq of seqs) log.see(world.get(seq)!);
    const beats = log.heartbeatVerdict();
    const written = log.fileVerdict();
    assert.ok(beats.count >= 2, `${label}: ${beats.count} heartbeats`);
    assert.is(beats.gaps + beats.duplicates, 0, `${label}: heartbeats ${JSON.stringify(beats)}`);
    assert.is(written.gaps + written.duplicates, 0, `${label}: files ${JSON.stringify(written)}`);
    disks[1].flush();
    const verdict = checkLinuxDisk(standbyImage, log.files);
    assert.ok(verdict.fsck_clean, `${label}: e2fsck after the journal replay: ${verdict.fsck_output}`);
    assert.equal(verdict.files_missing, [], `${label}: released files missing from the standby's disk`);
    assert.equal(verdict.files_wrong, [], `${label}: released files with other contents on the standby's disk`);
    assert.ok(verdict.files_checked >= 3, `${label}: ${verdict.files_checked} files checked`);
  } finally {
    await primary.destroy();
    await secondary.destroy();
    for (const disk of [...disks, ...bootImages]) disk.close();
  }
}

test("the standby takes over a Linux guest killed at a random moment: no output gap or duplicate, every released file intact after e2fsck", async () => {
  const files = linuxGuestOrSkip("the Linux failover");
  if (!files) return;
  const dir = mkdtempSync(join(tmpdir(), "tandem-linux-"));
  const random = seededRandom(Date.now() >>> 0);
  try {
    const trials = long ? 5 : 1;
    for (let trial = 0; trial < trials; trial++) await failover(files, dir, 1000 + Math.floor(random() * 9000), trial);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("SeaBIOS boots Linux from a disk image (syslinux on hda, data on hdb), replicated and failed over", async () => {
  const files = linuxGuestOrSkip("the BIOS disk boot");
  if (!files) return;
  if (!biosBootsHere) return void console.log(`  (skipped the BIOS disk boot on ${runtimeName()}: it runs on Node, and here with TANDEM_LONG_TESTS=1)`);
  const dir = mkdtempSync(join(tmpdir(), "tandem-linux-disk-"));
  try {
    await failover(files, dir, 2000 + Math.floor(seededRandom(Date.now() >>> 0)() * 6000), 0, "disk");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("SeaBIOS boots Linux from a CD-ROM (isolinux), replicated and failed over; the CD-ROM image stays as it was", async () => {
  const files = linuxGuestOrSkip("the CD-ROM boot");
  if (!files) return;
  if (!biosBootsHere) return void console.log(`  (skipped the CD-ROM boot on ${runtimeName()}: it runs on Node, and here with TANDEM_LONG_TESTS=1)`);
  const before = createHash("sha256").update(readFileSync(files.bootIso)).digest("hex");
  const dir = mkdtempSync(join(tmpdir(), "tandem-linux-cd-"));
  try {
    await failover(files, dir, 2000 + Math.floor(seededRandom(Date.now() >>> 0)() * 6000), 0, "cdrom");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  assert.is(createHash("sha256").update(readFileSync(files.bootIso)).digest("hex"), before, "boot.iso is byte for byte what it was");
  assert.is(before, files.sha256["boot.iso"], "and what the build wrote");
});

test.run();
