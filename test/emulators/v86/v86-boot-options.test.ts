import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { CounterLog } from "../../../host/cli/guests.ts";
import { createImage, openDisk } from "../../../host/disk/registry.ts";
import { debianSeaBios } from "../../../host/emulators/v86/firmware.ts";
import { V86Machine, type V86MachineOptions } from "../../../host/emulators/v86/v86-machine.ts";
import { ErrorCode, TandemError } from "../../../host/errors.ts";
import { linuxGuestFiles, LINUX_BUILD_COMMAND } from "../../../host/guests/linux-guest.ts";
import { MemoryDisk } from "../../../host/machine/memory-disk.ts";
import { errorCode } from "../../support/errors.ts";
import { until } from "../../support/session.ts";

const test = suite("v86 adapter options: BIOS, kernels, drives and boot order; bad ones refused by name; read-only drives stay unwritten");
const dir = mkdtempSync(join(tmpdir(), "tandem-v86-options-"));

async function createCode(options: V86MachineOptions): Promise<{ code: string | undefined; message: string }> {
  try {
    const machine = await V86Machine.create(options);
    await machine.destroy();
    return { code: undefined, message: "" };
  } catch (error) {
    return error instanceof TandemError ? { code: error.code, message: error.message } : { code: `not a TandemError: ${String(error)}`, message: String(error) };
  }
}

test("contradictory or impossible options are refused with a coded error that says what to change", async () => {
  const kernel = new Uint8Array(4096);
  const cases: [V86MachineOptions, RegExp][] = [
    [{ multiboot: kernel, bzimage: kernel }, /multiboot or bzimage, not both/],
    [{ hda: new MemoryDisk(1 << 20), disk: new MemoryDisk(1 << 20) }, /hda or disk/],
    [{ bios: kernel, hdb: new MemoryDisk(1 << 20) }, /hdb needs an hda/],
    [{ bios: kernel, fda: new MemoryDisk(1000 * 1024) }, /floppy image must be one of/],
    [{ bios: kernel, hda: new MemoryDisk(1000) }, /whole number of 512-byte sectors/],
    [{ bzimage: kernel, initrd: new Uint8Array(2 << 20), memoryBytes: 64 << 20, bios: kernel }, /v86 loads it at 64 MiB, so give more than 66 MiB/],
    [{ hda: new MemoryDisk(1 << 20), bios: kernel, cmdline: "console=ttyS0" }, /command line needs a kernel/],
    [{ hda: new MemoryDisk(1 << 20), bios: kernel, initrd: kernel }, /initrd needs a kernel/],
    [{ bios: kernel }, /nothing to boot/],
    [{ multiboot: kernel, bios: kernel }, /multiboot kernel boots without a BIOS/],
    [{ hda: new MemoryDisk(1 << 20), bios: kernel, bootOrder: 0x1000 }, /bootOrder/],
  ];
  for (const [options, message] of cases) {
    const { code, message: text } = await createCode(options);
    assert.is(code, ErrorCode.BadArgument, `${JSON.stringify(Object.keys(options))}: ${text}`);
    assert.match(text, message);
  }
});

test("a missing BIOS names Debian's seabios package; the installed one is found", () => {
  let error: unknown;
  try {
    debianSeaBios({ bios: join(dir, "no-bios.bin"), vgaBios: join(dir, "no-vgabios.bin") });
  } catch (e) {
    error = e;
  }
  assert.ok(error instanceof TandemError, String(error));
  assert.is((error as TandemError).code, ErrorCode.EmulatorStart);
  assert.match((error as TandemError).message, /no-bios\.bin/);
  assert.match((error as TandemError).message, /apt-get install seabios/);
  let installed: ReturnType<typeof debianSeaBios> | undefined;
  try {
    installed = debianSeaBios();
  } catch {
    installed = undefined;
  }
  if (!installed) {
    if (globalThis.process?.env?.TANDEM_REQUIRE_LINUX === "1") assert.unreachable("Debian's seabios is not installed but TANDEM_REQUIRE_LINUX=1");
    console.log("  seabios is not installed here: not checking the default BIOS");
    return;
  }
  assert.ok(installed.bios.length >= 64 * 1024 && installed.bios.length % 4096 === 0, `bios.bin of ${installed.bios.length} bytes`);
  assert.ok(installed.vgaBios !== undefined && installed.vgaBios.length > 0);
});

test("bad paths: a missing disk image and a missing Linux build say which file, and how to build the guest", () => {
  assert.is(errorCode(() => openDisk(join(dir, "missing.img"), { readOnly: true })), ErrorCode.DiskIo);
  let message = "";
  try {
    linuxGuestFiles(join(dir, "no-build"));
  } catch (error) {
    assert.is((error as TandemError).code, ErrorCode.BadArgument);
    message = (error as Error).message;
  }
  assert.match(message, /the Linux guest is not built/);
  assert.ok(message.includes(LINUX_BUILD_COMMAND), message);
});

test("a disk opened read-only stays unwritten: the built-in guest's sector writes are dropped, never replicated, and it sees them lost", async () => {
  const path = join(dir, "readonly.img");
  createImage(path, "raw", { size: 256 * 1024 });
  const before = createHash("sha256").update(readFileSync(path)).digest("hex");
  const disk = openDisk(path, { readOnly: true });
  const machine = await V86Machine.create({ memoryBytes: 8 << 20, cmdline: "hz=100 dirty=8 disk=1", disk });
  try {
    assert.equal(machine.disks, [], "a read-only drive is not among the disks whose writes travel in checkpoints");
    assert.ok(machine.drives.hda?.readOnly);
    const log = new CounterLog();
    machine.onOutput((o) => log.see(new TextDecoder().decode(o.data)));
    const reported: number[] = [];
    machine.onDiskWrite((index) => reported.push(index));
    machine.resume();
    await until(() => log.counters.length >= 5, 30_000);
    machine.pause();
    assert.ok(machine.drives.hda!.droppedWrites > 0, "the guest tried to write");
    assert.equal(reported, [], "no write was reported to the engine");
    assert.ok(log.diskErrors > 0, "the guest read back its sector unchanged: the write never reached the disk");
  } finally {
    await machine.destroy();
    disk.close();
  }
  assert.is(createHash("sha256").update(readFileSync(path)).digest("hex"), before, "the image file is unchanged");
});

test("a writable hda and hdb take disk indexes 0 and 1; a CD-ROM takes none and drops writes", async () => {
  const hda = new MemoryDisk(256 * 1024);
  const hdb = new MemoryDisk(512 * 1024);
  const iso = join(dir, "cd.iso");
  writeFileSync(iso, new Uint8Array(2048 * 16));
  const cdrom = openDisk(iso, { readOnly: true });
  const machine = await V86Machine.create({ memoryBytes: 8 << 20, multiboot: readFileSync(new URL("../../../guest/counter/counter.bin", import.meta.url)), hda, hdb, cdrom });
  try {
    assert.is(machine.disks.length, 2);
    assert.is(machine.disks[0], hda);
    assert.is(machine.disks[1], hdb);
    const drive = machine.drives.cdrom!;
    assert.ok(drive.readOnly);
    drive.set(0, new Uint8Array(2048).fill(7), () => {});
    assert.is(drive.droppedWrites, 1);
    assert.ok(cdrom.read(0, 2048).every((b) => b === 0), "the CD-ROM image is unchanged");
  } finally {
    await machine.destroy();
    cdrom.close();
  }
});

test.after(() => rmSync(dir, { recursive: true, force: true }));

test.run();
