/**
 * The identity of a v86 guest (host/machine/guest-identity.ts): everything v86 needs to be
 * configured alike for a saved state to restore into it. Firmware, kernels and initrds count by
 * content (SHA-256); memory, command line, boot order, a connected network card and each disk's
 * slot, size and read-only flag by value. Disk contents do not count: each side names its own image, and the stream
 * carries the contents.
 */

import { contentDigest, formatSize, guestIdentity, type GuestIdentity, type IdentityField } from "../../machine/guest-identity.ts";
import { V86_VERSION } from "./v86-internals.ts";
import type { V86MachineOptions } from "./v86-machine.ts";

/** The disk slots v86 has, in the order the identity lists them. */
export const DISK_SLOTS = ["hda", "hdb", "cdrom", "fda"] as const;
/** One of {@link DISK_SLOTS}. */
export type DiskSlot = (typeof DISK_SLOTS)[number];

/** A v86 machine's configuration, with its defaults filled in, as its identity sees it. */
export type V86IdentitySource = Pick<V86MachineOptions, "bios" | "vgaBios" | "multiboot" | "bzimage" | "initrd" | "cmdline" | "bootOrder" | "network" | DiskSlot> & {
  memoryBytes: number;
  vgaMemoryBytes: number;
};

const CONTENTS = [["bios", "bios"], ["vgaBios", "vga bios"], ["multiboot", "multiboot"], ["bzimage", "bzimage"], ["initrd", "initrd"]] as const;

/** The identity of the v86 guest `source` describes; fields it leaves out are not listed. */
export function v86Identity(source: V86IdentitySource): GuestIdentity {
  const fields: IdentityField[] = [
    { name: "emulator", kind: "value", value: `v86 ${V86_VERSION}` },
    { name: "memory", kind: "value", value: formatSize(source.memoryBytes) },
    { name: "vga memory", kind: "value", value: formatSize(source.vgaMemoryBytes) },
  ];
  for (const [key, name] of CONTENTS) {
    const bytes = source[key];
    if (bytes) fields.push({ name, kind: "digest", value: contentDigest(bytes) });
  }
  if (source.cmdline !== undefined) fields.push({ name: "cmdline", kind: "value", value: JSON.stringify(source.cmdline) });
  if (source.bootOrder !== undefined) fields.push({ name: "boot order", kind: "value", value: `0x${source.bootOrder.toString(16)}` });
  // The card is always there; whether its frames reach a network changes what a takeover runs.
  if (source.network) fields.push({ name: "network", kind: "value", value: "connected" });
  for (const slot of DISK_SLOTS) {
    const disk = source[slot];
    if (!disk) continue;
    // A CD-ROM is read-only whatever its image allows; a tandem Disk says whether it was opened so.
    const readOnly = slot === "cdrom" || ("readOnly" in disk && disk.readOnly === true);
    fields.push({ name: slot, kind: "value", value: `${formatSize(disk.size)}, ${readOnly ? "read-only" : "read-write"}` });
  }
  return guestIdentity(fields);
}
