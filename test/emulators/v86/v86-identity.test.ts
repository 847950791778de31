import { suite } from "uvu";
import * as assert from "uvu/assert";
import { v86Identity, type V86IdentitySource } from "../../../host/emulators/v86/v86-identity.ts";
import { V86Machine, builtInGuest } from "../../../host/emulators/v86/v86-machine.ts";
import { identityDifferences } from "../../../host/machine/guest-identity.ts";
import type { MachineDisk } from "../../../host/machine/machine.ts";
import { MemoryDisk } from "../../../host/machine/memory-disk.ts";

const test = suite("v86 guest identity: every field of the description counts, disk contents do not");
const MIB = 1 << 20;

function disk(size: number, fill = 0, readOnly?: boolean): MachineDisk {
  const d = new MemoryDisk(size);
  d.bytes.fill(fill);
  return readOnly === undefined ? d : Object.assign(d, { readOnly });
}

const BASE = (): V86IdentitySource => ({
  memoryBytes: 128 * MIB,
  vgaMemoryBytes: 256 * 1024,
  bios: Uint8Array.of(1),
  vgaBios: Uint8Array.of(2),
  bzimage: Uint8Array.of(3),
  initrd: Uint8Array.of(4),
  cmdline: "console=ttyS0",
  bootOrder: 0x213,
  hda: disk(MIB),
  cdrom: disk(2 * MIB),
});

test("stable: built twice from the same description, the same digest; disk contents do not count", () => {
  assert.is(v86Identity(BASE()).digest, v86Identity(BASE()).digest);
  assert.is(v86Identity({ ...BASE(), hda: disk(MIB, 0xaa) }).digest, v86Identity(BASE()).digest, "each side names its own image");
  assert.is(v86Identity({ ...BASE(), hdb: null }).digest, v86Identity(BASE()).digest, "no disk and null are alike");
});

test("sensitive: each field alone changes the digest, and the differences name it", () => {
  const base = v86Identity(BASE());
  const changes: [string, Partial<V86IdentitySource>, string][] = [
    ["memory", { memoryBytes: 64 * MIB }, "memory: primary 128 MiB, standby 64 MiB"],
    ["vga memory", { vgaMemoryBytes: 8 * MIB }, "vga memory: primary 256 KiB, standby 8 MiB"],
    ["bios", { bios: Uint8Array.of(9) }, "bios: content differs"],
    ["vga bios", { vgaBios: Uint8Array.of(9) }, "vga bios: content differs"],
    ["bzimage", { bzimage: Uint8Array.of(9) }, "bzimage: content differs"],
    ["initrd", { initrd: Uint8Array.of(4, 0) }, "initrd: content differs"],
    ["no initrd", { initrd: undefined }, "initrd: standby has none"],
    ["multiboot", { multiboot: Uint8Array.of(3) }, "multiboot: primary has none"],
    ["cmdline", { cmdline: "console=ttyS0 quiet" }, 'cmdline: primary "console=ttyS0", standby "console=ttyS0 quiet"'],
    ["boot order", { bootOrder: 0x123 }, "boot order: primary 0x213, standby 0x123"],
    ["hda size", { hda: disk(2 * MIB) }, "hda: primary 1 MiB, read-write, standby 2 MiB, read-write"],
    ["hda read-only", { hda: disk(MIB, 0, true) }, "hda: primary 1 MiB, read-write, standby 1 MiB, read-only"],
    ["hda in another slot", { hda: undefined, hdb: disk(MIB) }, "hda: standby has none"],
    ["a floppy more", { fda: disk(1440 * 1024) }, "fda: primary has none"],
    ["no cdrom", { cdrom: null }, "cdrom: standby has none"],
    ["a connected network card", { network: true }, "network: primary has none"],
  ];
  const digests = new Set([base.digest]);
  for (const [name, change, phrase] of changes) {
    const other = v86Identity({ ...BASE(), ...change });
    digests.add(other.digest);
    const differences = identityDifferences(base, other, "primary", "standby");
    assert.ok(differences.includes(phrase), `${name}: ${JSON.stringify(differences)}`);
  }
  assert.is(digests.size, changes.length + 1, "every change made a digest of its own");
  assert.ok(base.fields.some((f) => f.name === "cdrom" && f.value.endsWith("read-only")), "a CD-ROM is read-only whatever its image");
});

test("a V86Machine's identity is computed from its options, the built-in guest and defaults included", async () => {
  const machine = await V86Machine.create({ memoryBytes: 8 * MIB, cmdline: "hz=10", disk: new MemoryDisk(256 * 1024) });
  try {
    const expected = v86Identity({ memoryBytes: 8 * MIB, vgaMemoryBytes: 256 * 1024, multiboot: builtInGuest(), cmdline: "hz=10", hda: new MemoryDisk(256 * 1024) });
    assert.is(machine.identity.digest, expected.digest);
    assert.equal(machine.identity.fields.map((f) => f.name), ["emulator", "memory", "vga memory", "multiboot", "cmdline", "hda"]);
  } finally {
    await machine.destroy();
  }
});

test.run();
