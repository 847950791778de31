import { copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { openDisk } from "../../host/disk/registry.ts";
import type { Disk } from "../../host/disk/disk.ts";
import { V86Machine } from "../../host/emulators/v86/v86-machine.ts";
import { checkLinuxDisk } from "../../host/guests/linux-disk-check.ts";
import { bootLinux, linuxMachineOptions, startWorkload, type LinuxGuestFiles } from "../../host/guests/linux-guest.ts";
import { LinuxLog } from "../../host/guests/linux-log.ts";
import { seededRandom } from "../../host/prng.ts";
import { memoryPair } from "../../host/protocol/transport.ts";
import { replicate, type ReleasedOutput } from "../../host/replication/primary.ts";
import { standby } from "../../host/replication/secondary.ts";
import { linuxGuestOrSkip } from "../support/linux.ts";
import { until } from "../support/session.ts";

const test = suite("Linux guest: Debian's i386 kernel in v86, replicated, its primary killed at a random moment, its files intact on the standby");
const long = globalThis.process?.env?.TANDEM_LONG_TESTS === "1";
/** The first boot (no snapshot yet) takes minutes on a loaded 2-core machine; later runs restore in seconds. */
const BOOT_TIMEOUT_MS = 900_000;

/**
 * One failover: the primary restored from the boot snapshot runs the file workload, replicated
 * every 50 ms to a standby in this process; `killAfterMs` after the first checkpoint the
 * primary's connection breaks and it stops, as if killed. Returns what the outside world saw.
 */
async function failover(files: LinuxGuestFiles, dir: string, killAfterMs: number, trial: number): Promise<void> {
  const label = `trial ${trial} (killed ${killAfterMs} ms after the first checkpoint)`;
  const primaryImage = join(dir, `primary-${trial}.img`);
  const standbyImage = join(dir, `standby-${trial}.img`);
  copyFileSync(files.dataImage, primaryImage);
  copyFileSync(files.dataImage, standbyImage);
  const disks: Disk[] = [openDisk(primaryImage, { format: "raw" }), openDisk(standbyImage, { format: "raw" })];
  const booted = await bootLinux(files, "bzimage", linuxMachineOptions(files, "bzimage", { data: disks[0] }), { timeoutMs: BOOT_TIMEOUT_MS });
  const primary = booted.machine;
  const secondary = await V86Machine.create(linuxMachineOptions(files, "bzimage", { data: disks[1] }));
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
    for (const disk of disks) disk.close();
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

test.run();
