import { copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { openDisk } from "../../host/disk/registry.ts";
import { V86Machine } from "../../host/emulators/v86/v86-machine.ts";
import { bootLinux, linuxMachineOptions, startWorkload } from "../../host/guests/linux-guest.ts";
import { VerifyingDirtyLog } from "../../host/memory/verifying-dirty-log.ts";
import { linuxGuestOrSkip } from "../support/linux.ts";

const test = suite("write tracking over a Linux guest: every page Debian's kernel, its page tables, its disk DMA and its file workload change is marked");
const long = globalThis.process?.env?.TANDEM_LONG_TESTS === "1";
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Runs `machine` in epochs of `epochMs`, collecting its verifying log after each, until `done()` or `epochs` run out. */
async function verifyEpochs(machine: V86Machine, epochs: number, epochMs: number, done: () => boolean = () => false): Promise<VerifyingDirtyLog["counts"]> {
  const log = machine.dirtyLogs[0];
  assert.ok(log instanceof VerifyingDirtyLog, "tracking: verify gives a verifying log");
  for (let i = 0; i < epochs && !done(); i++) {
    machine.resume();
    await sleep(epochMs);
    machine.pause();
    log.collect(); // throws E_TRACKING_MISSED, naming the page, on any change not marked
  }
  return log.counts;
}

test("the file workload (ext4 on ata_piix: disk DMA, page cache, user processes) for 200 epochs: no page missed", async () => {
  const files = linuxGuestOrSkip("the Linux tracking test");
  if (!files) return;
  const dir = mkdtempSync(join(tmpdir(), "tandem-linux-tracking-"));
  const image = join(dir, "data.img");
  copyFileSync(files.dataImage, image);
  const disk = openDisk(image, { format: "raw" });
  try {
    const { machine } = await bootLinux(files, "bzimage", { ...linuxMachineOptions(files, "bzimage", { data: disk }), tracking: "verify" }, { timeoutMs: 900_000 });
    try {
      let lines = "";
      machine.onOutput((o) => void (lines += new TextDecoder().decode(o.data)));
      const log = machine.dirtyLogs[0]!;
      log.arm();
      log.collect();
      startWorkload(machine, "files");
      const counts = await verifyEpochs(machine, 200, 50);
      assert.ok(/file \d+ [0-9a-f]{64}/.test(lines), `the workload wrote files: ${JSON.stringify(lines.slice(-300))}`);
      assert.ok(counts.changed > 200, `pages changed: ${JSON.stringify(counts)}`);
    } finally {
      await machine.destroy();
    }
  } finally {
    disk.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a whole boot of Debian's kernel from the BIOS to its init, in epochs of 100 ms: no page missed (TANDEM_LONG_TESTS=1)", async () => {
  if (!long) {
    console.log("  skipping the Linux boot under verify: set TANDEM_LONG_TESTS=1 (it takes minutes)");
    return;
  }
  const files = linuxGuestOrSkip("the Linux boot tracking test");
  if (!files) return;
  const dir = mkdtempSync(join(tmpdir(), "tandem-linux-tracking-"));
  const image = join(dir, "data.img");
  copyFileSync(files.dataImage, image);
  const disk = openDisk(image, { format: "raw" });
  const machine = await V86Machine.create({ ...linuxMachineOptions(files, "bzimage", { data: disk }), tracking: "verify" });
  try {
    let lines = "";
    machine.onOutput((o) => void (lines += new TextDecoder().decode(o.data)));
    const log = machine.dirtyLogs[0]!;
    log.arm();
    log.collect();
    const counts = await verifyEpochs(machine, 12_000, 100, () => lines.includes("tandem-linux: ready"));
    assert.ok(lines.includes("tandem-linux: ready"), `the guest booted: ${JSON.stringify(lines.slice(-300))}`);
    assert.ok(counts.checked > 50, JSON.stringify(counts));
  } finally {
    await machine.destroy();
    disk.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
