/**
 * One description of a v86 guest for both sides of a pair (docs/embedding.md, "A guest file"): a
 * small JSON file, or the equivalent command-line flags, that names the kernel, initrd, command
 * line, firmware, memory, boot order and disks. Both sides build their machine from it; its
 * identity (v86-identity.ts) then travels in the stream header, so a side built from another
 * description is refused at connect.
 *
 * ```json
 * { "bzimage": "vmlinuz", "initrd": "initrd.img", "cmdline": "console=ttyS0",
 *   "memory": 128, "hda": { "path": "disk.qcow2" }, "cdrom": "live.iso" }
 * ```
 *
 * Validation is strict: an unknown key, a value of the wrong type, a file that cannot be read or
 * a memory size v86 cannot take is E_GUEST_FILE, and the message names the field (or flag) and
 * what to write instead. Relative paths are relative to the guest file's folder (for flags, to
 * the working directory), so a guest folder can be copied to the standby's host as it is.
 */

import { readFileSync, statSync } from "node:fs";
import { dirname, resolve } from "node:path";
import type { Disk } from "../../disk/disk.ts";
import { formatNames, openDisk } from "../../disk/registry.ts";
import { ErrorCode, TandemError } from "../../errors.ts";
import { DISK_SLOTS, type DiskSlot } from "./v86-identity.ts";
import type { V86MachineOptions } from "./v86-machine.ts";

/** A disk of the description: its image file, its format (probed when absent), read-only or not. */
export interface GuestDiskDescription {
  /** The image file, an absolute path once the description is read. */
  path: string;
  /** A registered format ("raw", "qcow2", "cow"); probed from the file when absent. */
  format?: string;
  /** Open the image read-only (a CD-ROM always is). */
  readOnly?: boolean;
}

/** A guest as a file or flags describe it, paths resolved. */
export interface GuestDescription extends Partial<Record<DiskSlot, GuestDiskDescription>> {
  /** The guest file it was read from (messages name its keys); undefined for flags (messages name them). */
  source?: string;
  /** A multiboot kernel; or */
  multiboot?: string;
  /** a Linux bzImage (then the BIOS is needed, v86's default or `bios`). */
  bzimage?: string;
  /** An initial ramdisk for the kernel. */
  initrd?: string;
  /** The kernel's command line. */
  cmdline?: string;
  /** The system BIOS image and the VGA BIOS image. */
  bios?: string;
  vgaBios?: string;
  /** Guest RAM in MiB. */
  memory?: number;
  /** v86's boot order: one nibble per drive, the first in the lowest (0x312: hard disk, floppy, CD-ROM). */
  bootOrder?: number;
  /** Connect the guest's NE2000 card to tandem's network bridge. */
  network?: boolean;
}

/** A description's files read and disks opened: what `V86Machine.create` takes. */
export type GuestOptions = Pick<V86MachineOptions, "memoryBytes" | "bios" | "vgaBios" | "multiboot" | "bzimage" | "initrd" | "cmdline" | "bootOrder" | "network"> &
  Partial<Record<DiskSlot, Disk>>;

/** How {@link openGuest} opens disks. */
export interface OpenGuestOptions {
  /**
   * Called with each writable disk once opened (its slot and path): returns the disk the machine
   * gets, which owns the opened one (a replication layer over the image, say).
   */
  disk?: (slot: DiskSlot, path: string, image: Disk) => Disk;
}

/** An opened guest: its machine options, and how to close its disks when the machine is gone. */
export interface OpenedGuest {
  options: GuestOptions;
  close(): void;
}

/** The keys of a guest file, with the flag each has on the command line. */
const KEYS = {
  multiboot: "--multiboot", bzimage: "--bzimage", initrd: "--initrd", cmdline: "--cmdline", bios: "--bios", vgaBios: "--vga-bios",
  memory: "--memory", bootOrder: "--boot-order", network: "--network", hda: "--hda", hdb: "--hdb", cdrom: "--cdrom", fda: "--fda",
} as const;
type Key = keyof typeof KEYS;
const FILE_KEYS = ["multiboot", "bzimage", "initrd", "bios", "vgaBios"] as const;
const DISK_KEYS = ["path", "format", "readOnly"] as const;
/** Boot devices by drive name, as v86's CMOS boot order numbers them (copy/v86 src/rtc.js). */
const BOOT_DEVICES: Readonly<Record<string, number>> = { fda: 1, hda: 2, hdb: 2, cdrom: 3 };
const MIN_MIB = 4;
const MAX_MIB = 1920;
const MAX_CMDLINE_BYTES = 2048; // Linux's COMMAND_LINE_SIZE on x86
/** Where v86 puts an initrd in guest RAM (copy/v86 src/kernel.js): RAM must reach past its end. */
const INITRD_ADDRESS_MIB = 64;
const MIB = 1 << 20;

/** Names a field in messages: the file and its key ("guest.json: \"hda.path\""), or the flag it came from ("--hda"). */
function whereIn(source: string | undefined): (key: string) => string {
  return source === undefined ? (key) => KEYS[key.split(".")[0] as Key] ?? key : (key) => `${source}: "${key}"`;
}

/**
 * Reads and checks the guest file at `path`: JSON, known keys only, values of the right types;
 * relative paths are resolved against the file's folder. Files are checked when opened
 * ({@link openGuest}).
 */
export function readGuestFile(path: string): GuestDescription {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (error) {
    throw new TandemError(ErrorCode.GuestFile, `cannot read the guest file ${path}: ${reason(error)}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new TandemError(ErrorCode.GuestFile, `the guest file ${path} is not JSON: ${reason(error)}`);
  }
  return describeGuest(json, dirname(resolve(path)), path);
}

/**
 * The description that the guest flags give (`--bzimage FILE --memory 128 --hda FILE[,format=F][,readonly]`),
 * paths resolved against `cwd`; flags left out are undefined. Returns undefined when no guest flag is given.
 */
export function guestFromFlags(flags: Partial<Record<Key, string | boolean>>, cwd = process.cwd()): GuestDescription | undefined {
  const json: Record<string, unknown> = {};
  for (const key of Object.keys(KEYS) as Key[]) {
    const value = flags[key];
    if (value === undefined || value === false) continue;
    if (key === "memory") json.memory = numeric(value);
    else if (key === "bootOrder") json.bootOrder = /^(0x[0-9a-f]+|\d+)$/i.test(String(value)) ? Number(value) : value;
    else if ((DISK_SLOTS as readonly string[]).includes(key)) json[key] = diskFlag(String(value), KEYS[key]);
    else json[key] = value;
  }
  if (Object.keys(json).length === 0) return undefined;
  return describeGuest(json, cwd, undefined);
}

/**
 * Checks a parsed guest file (`source`, its path) or the flags' equivalent (`source` undefined):
 * an object of known keys, each of the right type; relative paths resolved against `base`.
 */
export function describeGuest(json: unknown, base: string, source: string | undefined): GuestDescription {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new TandemError(ErrorCode.GuestFile, `${source ?? "the guest"}: a guest file is a JSON object, e.g. {"bzimage": "vmlinuz", "memory": 128}, not ${kind(json)}`);
  }
  const where = whereIn(source);
  const fields = json as Record<string, unknown>;
  for (const key of Object.keys(fields)) {
    if (!(key in KEYS)) throw bad(where(key), `is not a key of a guest file; the keys are ${Object.keys(KEYS).join(", ")}`);
  }
  const out: GuestDescription = source === undefined ? {} : { source };
  for (const key of FILE_KEYS) {
    if (fields[key] !== undefined) out[key] = path(fields[key], base, where(key));
  }
  if (out.multiboot && out.bzimage) throw bad(where("bzimage"), "and multiboot both name a kernel: give one");
  if (out.initrd && !out.multiboot && !out.bzimage) throw bad(where("initrd"), "needs a kernel to load it: give bzimage (or multiboot) too");
  if (fields.cmdline !== undefined) {
    if (typeof fields.cmdline !== "string") throw bad(where("cmdline"), `must be a string, not ${kind(fields.cmdline)}`);
    if (new TextEncoder().encode(fields.cmdline).length > MAX_CMDLINE_BYTES) throw bad(where("cmdline"), `is longer than Linux takes (${MAX_CMDLINE_BYTES} bytes)`);
    out.cmdline = fields.cmdline;
  }
  if (fields.memory !== undefined) {
    const mib = fields.memory;
    if (typeof mib !== "number" || !Number.isInteger(mib) || mib < MIN_MIB || mib > MAX_MIB) {
      throw bad(where("memory"), `must be a whole number of MiB from ${MIN_MIB} to ${MAX_MIB}, not ${JSON.stringify(mib)}`);
    }
    out.memory = mib;
  }
  if (fields.bootOrder !== undefined) out.bootOrder = bootOrder(fields.bootOrder, where("bootOrder"));
  if (fields.network !== undefined) {
    if (typeof fields.network !== "boolean") throw bad(where("network"), `must be true or false, not ${kind(fields.network)}`);
    out.network = fields.network;
  }
  for (const slot of DISK_SLOTS) {
    if (fields[slot] !== undefined) out[slot] = disk(fields[slot], slot, base, where);
  }
  return out;
}

/**
 * Reads the description's files and opens its disks (through the disk registry; a CD-ROM
 * read-only). Checks that every file exists and that the memory holds the initrd where v86 loads
 * it. On any error, what was opened is closed again.
 */
export function openGuest(description: GuestDescription, open: OpenGuestOptions = {}): OpenedGuest {
  const where = whereIn(description.source);
  const opened: Disk[] = [];
  const close = () => {
    for (const d of opened.splice(0)) d.close();
  };
  try {
    const options: GuestOptions = {};
    for (const key of FILE_KEYS) {
      const file = description[key];
      if (file !== undefined) options[key] = readGuestPart(file, where(key));
    }
    if (description.cmdline !== undefined) options.cmdline = description.cmdline;
    if (description.memory !== undefined) options.memoryBytes = description.memory * MIB;
    if (description.bootOrder !== undefined) options.bootOrder = description.bootOrder;
    if (description.network !== undefined) options.network = description.network;
    if (options.initrd) {
      const needMiB = INITRD_ADDRESS_MIB + Math.floor(options.initrd.length / MIB) + 1;
      const haveMiB = description.memory ?? 32; // V86Machine's default
      if (haveMiB < needMiB) {
        throw bad(where("memory"), `is ${haveMiB} MiB, but v86 loads the initrd (${(options.initrd.length / MIB).toFixed(1)} MiB) at 64 MiB: give at least ${needMiB}`);
      }
    }
    for (const slot of DISK_SLOTS) {
      const d = description[slot];
      if (!d) continue;
      check(d.path, where(slot));
      let image: Disk;
      try {
        image = openDisk(d.path, { format: d.format, readOnly: slot === "cdrom" || d.readOnly === true });
      } catch (error) {
        throw bad(where(slot), `${d.path} cannot be opened as a disk: ${reason(error)}`);
      }
      opened.push(image);
      if (open.disk && !image.readOnly) {
        image = open.disk(slot, d.path, image);
        opened[opened.length - 1] = image;
      }
      options[slot] = image;
    }
    return { options, close };
  } catch (error) {
    close();
    throw error;
  }
}

/** A file the guest needs (kernel, initrd, BIOS), read whole; E_GUEST_FILE naming the field if it cannot be. */
function readGuestPart(file: string, where: string): Uint8Array {
  check(file, where);
  try {
    return new Uint8Array(readFileSync(file));
  } catch (error) {
    throw bad(where, `${file} cannot be read: ${reason(error)}`);
  }
}

/** A file named by the description must exist and be a file. */
function check(file: string, where: string): void {
  let isFile: boolean;
  try {
    isFile = statSync(file).isFile();
  } catch (error) {
    const missing = (error as { code?: string }).code === "ENOENT";
    throw bad(where, missing ? `${file} does not exist` : `${file} cannot be read: ${reason(error)}`);
  }
  if (!isFile) throw bad(where, `${file} is not a file`);
}

function path(value: unknown, base: string, where: string): string {
  if (typeof value !== "string" || value === "") throw bad(where, `must be a file name (a string), not ${kind(value)}`);
  return resolve(base, value);
}

function disk(value: unknown, slot: DiskSlot, base: string, where: (key: string) => string): GuestDiskDescription {
  if (typeof value === "string") return { path: path(value, base, where(slot)), ...(slot === "cdrom" ? { readOnly: true } : {}) };
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw bad(where(slot), `must be an image file name or {"path": FILE, "format": FORMAT, "readOnly": BOOLEAN}, not ${kind(value)}`);
  }
  const fields = value as Record<string, unknown>;
  for (const key of Object.keys(fields)) {
    if (!(DISK_KEYS as readonly string[]).includes(key)) throw bad(where(slot), `has an unknown key "${key}"; a disk has ${DISK_KEYS.join(", ")}`);
  }
  if (fields.path === undefined) throw bad(where(slot), `needs a "path": the image file`);
  const out: GuestDiskDescription = { path: path(fields.path, base, where(`${slot}.path`)) };
  if (fields.format !== undefined) {
    if (typeof fields.format !== "string" || !formatNames().includes(fields.format)) {
      throw bad(where(`${slot}.format`), `must be one of ${formatNames().join(", ")}, not ${JSON.stringify(fields.format)}`);
    }
    out.format = fields.format;
  }
  if (fields.readOnly !== undefined) {
    if (typeof fields.readOnly !== "boolean") throw bad(where(`${slot}.readOnly`), `must be true or false, not ${kind(fields.readOnly)}`);
    if (slot === "cdrom" && !fields.readOnly) throw bad(where(`${slot}.readOnly`), "cannot be false: a CD-ROM is read-only");
    out.readOnly = fields.readOnly;
  }
  if (slot === "cdrom") out.readOnly = true;
  return out;
}

/** "cdrom,hda,fda" (the first tried first) or v86's number (0x123). */
function bootOrder(value: unknown, where: string): number {
  if (typeof value === "number") {
    if (!Number.isInteger(value) || value < 0 || value > 0xfff) throw bad(where, `must be v86's boot order, a number from 0 to 0xfff, not ${value}`);
    return value;
  }
  if (typeof value !== "string") throw bad(where, `must be drive names in order ("cdrom,hda,fda") or a number, not ${kind(value)}`);
  const names = value.split(",").map((s) => s.trim());
  const devices = names.map((name) => BOOT_DEVICES[name]);
  if (names.length > 3 || devices.some((d) => d === undefined) || new Set(devices).size !== devices.length) {
    throw bad(where, `"${value}": up to three of fda, hda (or hdb) and cdrom, each once, the first tried first`);
  }
  return devices.reduce((order, device, i) => order | (device << (4 * i)), 0);
}

/** `FILE[,format=F][,readonly]` as a disk of the description. */
function diskFlag(text: string, flag: string): Record<string, unknown> {
  const [file, ...options] = text.split(",");
  const out: Record<string, unknown> = { path: file };
  for (const option of options) {
    if (option === "readonly" || option === "read-only") out.readOnly = true;
    else if (option.startsWith("format=")) out.format = option.slice("format=".length);
    else throw bad(flag, `"${option}" is not a disk option; write ${flag} FILE[,format=FORMAT][,readonly]`);
  }
  return out;
}

/** A flag's text as a number where it is one, else as it is (the check then names the flag). */
function numeric(value: string | boolean): unknown {
  const n = Number(value);
  return typeof value === "string" && value.trim() !== "" && Number.isFinite(n) ? n : value;
}

function bad(where: string, what: string): TandemError {
  return new TandemError(ErrorCode.GuestFile, `${where} ${what}`);
}

function kind(value: unknown): string {
  return value === null ? "null" : Array.isArray(value) ? "a list" : `${typeof value} ${JSON.stringify(value)}`;
}

function reason(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
