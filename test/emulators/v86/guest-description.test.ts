import { suite } from "uvu";
import * as assert from "uvu/assert";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createImage } from "../../../host/disk/registry.ts";
import { describeGuest, guestFromFlags, openGuest, readGuestFile, type GuestDescription } from "../../../host/emulators/v86/guest-description.ts";
import { v86Identity } from "../../../host/emulators/v86/v86-identity.ts";
import { ErrorCode, TandemError } from "../../../host/errors.ts";
import { identityDifferences } from "../../../host/machine/guest-identity.ts";

const test = suite("the guest file and flags: one description of a v86 guest, strictly checked");
const dir = mkdtempSync(join(tmpdir(), "tandem-guest-"));
const MIB = 1 << 20;

// A guest folder: kernel, initrd, firmware, a raw disk, a qcow2 disk, a CD image.
const guestDir = join(dir, "guest");
mkdirSync(guestDir);
writeFileSync(join(guestDir, "vmlinuz"), Uint8Array.of(1, 2, 3));
writeFileSync(join(guestDir, "initrd.img"), new Uint8Array(3 * MIB));
writeFileSync(join(guestDir, "bios.bin"), Uint8Array.of(4));
writeFileSync(join(guestDir, "vgabios.bin"), Uint8Array.of(5));
createImage(join(guestDir, "disk.raw"), "raw", { size: MIB });
createImage(join(guestDir, "disk.qcow2"), "qcow2", { size: 2 * MIB });
createImage(join(guestDir, "live.iso"), "raw", { size: 4 * MIB });

const GOOD = {
  bzimage: "vmlinuz", initrd: "initrd.img", cmdline: "console=ttyS0", bios: "bios.bin", vgaBios: "vgabios.bin",
  memory: 128, bootOrder: "hda,cdrom,fda", hda: { path: "disk.qcow2", format: "qcow2" }, hdb: "disk.raw", cdrom: "live.iso",
};

function file(name: string, content: unknown): string {
  const path = join(guestDir, name);
  writeFileSync(path, typeof content === "string" ? content : JSON.stringify(content));
  return path;
}

function refusal(fn: () => unknown): TandemError {
  try {
    fn();
  } catch (error) {
    if (error instanceof TandemError) return error;
    throw error;
  }
  return assert.unreachable("it was accepted") as never;
}

test("a guest file: relative paths against its folder, every key read, disks opened (a CD-ROM read-only)", () => {
  const path = file("guest.json", GOOD);
  const description = readGuestFile(path);
  assert.equal(description, {
    source: path,
    bzimage: join(guestDir, "vmlinuz"), initrd: join(guestDir, "initrd.img"), bios: join(guestDir, "bios.bin"), vgaBios: join(guestDir, "vgabios.bin"),
    cmdline: "console=ttyS0", memory: 128, bootOrder: 0x132,
    hda: { path: join(guestDir, "disk.qcow2"), format: "qcow2" }, hdb: { path: join(guestDir, "disk.raw") }, cdrom: { path: join(guestDir, "live.iso"), readOnly: true },
  });
  const guest = openGuest(description);
  try {
    const o = guest.options;
    assert.equal(Array.from(o.bzimage!), [1, 2, 3]);
    assert.is(o.initrd!.length, 3 * MIB);
    assert.is(o.memoryBytes, 128 * MIB);
    assert.is(o.hda!.format, "qcow2");
    assert.is(o.hda!.size, 2 * MIB);
    assert.is(o.hda!.readOnly, false);
    assert.is(o.hdb!.format, "raw");
    assert.is(o.cdrom!.readOnly, true);
    assert.is(refusal(() => o.cdrom!.write(0, new Uint8Array(512))).code, ErrorCode.DiskReadOnly, "the CD-ROM refuses writes");
  } finally {
    guest.close();
  }
});

test("the flags say the same as the file; paths against the working directory", () => {
  const fromFile = readGuestFile(file("guest.json", GOOD));
  const fromFlags = guestFromFlags({
    bzimage: "vmlinuz", initrd: "initrd.img", cmdline: "console=ttyS0", bios: "bios.bin", vgaBios: "vgabios.bin", memory: "128",
    bootOrder: "hda,cdrom,fda", hda: "disk.qcow2,format=qcow2", hdb: "disk.raw", cdrom: "live.iso",
  }, guestDir);
  delete fromFile.source;
  assert.equal(fromFlags, fromFile);
  assert.is(guestFromFlags({}), undefined, "no guest flag: no description");
  assert.equal(guestFromFlags({ hda: "x.img,readonly", bootOrder: "0x312" }, "/d"), { hda: { path: "/d/x.img", readOnly: true }, bootOrder: 0x312 });
});

test("two sides with their own disk images of the same size have the same identity; another size differs", () => {
  const identity = (description: GuestDescription) => {
    const guest = openGuest(description);
    try {
      return v86Identity({ ...guest.options, memoryBytes: guest.options.memoryBytes!, vgaMemoryBytes: 256 * 1024 });
    } finally {
      guest.close();
    }
  };
  createImage(join(guestDir, "standby.qcow2"), "qcow2", { size: 2 * MIB });
  createImage(join(guestDir, "small.qcow2"), "qcow2", { size: MIB });
  const primary = identity(readGuestFile(file("guest.json", GOOD)));
  const standby = identity(readGuestFile(file("standby.json", { ...GOOD, hda: "standby.qcow2" })));
  assert.is(standby.digest, primary.digest);
  const small = identity(readGuestFile(file("small.json", { ...GOOD, hda: "small.qcow2" })));
  assert.equal(identityDifferences(primary, small, "primary", "standby"), ["hda: primary 2 MiB, read-write, standby 1 MiB, read-write"]);
});

test("a bad guest file gets E_GUEST_FILE naming the field and what to write", () => {
  const cases: [string, unknown, string][] = [
    ["bad JSON", "{ \"memory\": 128,, }", "is not JSON"],
    ["not an object", [1, 2], "a guest file is a JSON object"],
    ["unknown key", { ...GOOD, kernel: "vmlinuz" }, `"kernel" is not a key of a guest file; the keys are multiboot, bzimage`],
    ["memory as a string", { memory: "128" }, `"memory" must be a whole number of MiB from 4 to 1920, not "128"`],
    ["memory too small", { memory: 2 }, `"memory" must be a whole number of MiB from 4 to 1920, not 2`],
    ["memory too big", { memory: 4096 }, "not 4096"],
    ["memory fractional", { memory: 12.5 }, "not 12.5"],
    ["cmdline a number", { cmdline: 5 }, `"cmdline" must be a string, not number 5`],
    ["a path a number", { bzimage: 5 }, `"bzimage" must be a file name (a string), not number 5`],
    ["an empty path", { bios: "" }, `"bios" must be a file name`],
    ["two kernels", { bzimage: "vmlinuz", multiboot: "vmlinuz" }, `"bzimage" and multiboot both name a kernel`],
    ["initrd alone", { initrd: "initrd.img" }, `"initrd" needs a kernel to load it`],
    ["boot order of unknown drives", { bootOrder: "hda,usb" }, `"bootOrder" "hda,usb": up to three of fda, hda (or hdb) and cdrom`],
    ["boot order twice the same", { bootOrder: "hda,hdb" }, "each once"],
    ["boot order out of range", { bootOrder: 0x1000 }, "a number from 0 to 0xfff"],
    ["network a string", { network: "yes" }, `"network" must be true or false`],
    ["disk of a number", { hda: 3 }, `"hda" must be an image file name or {"path"`],
    ["disk with an unknown key", { hda: { path: "disk.raw", size: 5 } }, `"hda" has an unknown key "size"`],
    ["disk without a path", { hda: { format: "raw" } }, `"hda" needs a "path"`],
    ["disk of an unknown format", { hda: { path: "disk.raw", format: "vmdk" } }, `"hda.format" must be one of raw, cow, qcow2, not "vmdk"`],
    ["readOnly a string", { hda: { path: "disk.raw", readOnly: "yes" } }, `"hda.readOnly" must be true or false`],
    ["a writable CD-ROM", { cdrom: { path: "live.iso", readOnly: false } }, `"cdrom.readOnly" cannot be false`],
  ];
  for (const [name, content, phrase] of cases) {
    const path = file("bad.json", content);
    const error = refusal(() => readGuestFile(path));
    assert.is(error.code, ErrorCode.GuestFile, name);
    assert.ok(error.message.includes(phrase), `${name}: ${error.message}`);
    assert.ok(error.message.includes(path), `${name}: the message names the file`);
  }
  assert.is(refusal(() => readGuestFile(join(dir, "nowhere.json"))).code, ErrorCode.GuestFile);
  assert.match(refusal(() => readGuestFile(join(dir, "nowhere.json"))).message, "cannot read the guest file");
});

test("missing and unusable files, and memory that cannot hold the initrd, are refused when opened", () => {
  const cases: [unknown, string][] = [
    [{ ...GOOD, bios: "missing.bin" }, `"bios" ${join(guestDir, "missing.bin")} does not exist`],
    [{ ...GOOD, hdb: "nothing.img" }, `"hdb" ${join(guestDir, "nothing.img")} does not exist`],
    [{ ...GOOD, cdrom: "." }, `"cdrom" ${guestDir} is not a file`],
    [{ ...GOOD, hda: { path: "disk.raw", format: "qcow2" } }, `"hda" ${join(guestDir, "disk.raw")} cannot be opened as a disk: E_DISK_FORMAT`],
    [{ ...GOOD, memory: 64 }, `"memory" is 64 MiB, but v86 loads the initrd (3.0 MiB) at 64 MiB: give at least 68`],
    [{ bzimage: "vmlinuz", initrd: "initrd.img" }, `"memory" is 32 MiB`],
  ];
  for (const [content, phrase] of cases) {
    const description = readGuestFile(file("bad.json", content));
    const error = refusal(() => openGuest(description));
    assert.is(error.code, ErrorCode.GuestFile, phrase);
    assert.ok(error.message.includes(phrase), error.message);
  }
  // A flag's error names the flag.
  const flags = guestFromFlags({ hda: "missing.img" }, guestDir)!;
  assert.match(refusal(() => openGuest(flags)).message, `--hda ${join(guestDir, "missing.img")} does not exist`);
  assert.match(refusal(() => guestFromFlags({ memory: "lots" })).message, `--memory must be a whole number of MiB from 4 to 1920, not "lots"`);
  assert.match(refusal(() => guestFromFlags({ hda: "x.img,cache=none" })).message, `--hda "cache=none" is not a disk option`);
  assert.is(refusal(() => describeGuest(null, dir, undefined)).code, ErrorCode.GuestFile);
});

test.after(() => rmSync(dir, { recursive: true, force: true }));

test.run();
