/**
 * The guests the CLI runs: the built-in guest (guest/counter) in v86, the default, or the
 * reference machine (host/machine/reference-machine.ts), which needs no emulator. Both print
 * `counter N` once a tick and `disk errors N` once their disk read-back check has failed, so the
 * commands judge either from its released output alone ({@link CounterLog}). Or any v86 guest a
 * guest file or the kernel, firmware and disk flags describe (host/emulators/v86/guest-description.ts).
 * Or tandem's Linux guest (linux-cli-guest.ts), once built, which the demo judges by its own
 * lines and its disk.
 */

import { join, resolve } from "node:path";
import type { Disk } from "../disk/disk.ts";
import { createImage, openDisk } from "../disk/registry.ts";
import { guestFromFlags, openGuest, readGuestFile, type GuestDescription, type OpenGuestOptions } from "../emulators/v86/guest-description.ts";
import { V86Machine } from "../emulators/v86/v86-machine.ts";
import { ErrorCode, TandemError } from "../errors.ts";
import type { Machine } from "../machine/machine.ts";
import { MemoryDisk } from "../machine/memory-disk.ts";
import type { FrameSink } from "../net/net-bridge.ts";
import { ReferenceMachine } from "../machine/reference-machine.ts";
import { linuxCliGuest, type GuestRole } from "./linux-cli-guest.ts";
import { choice, flag, number, text, type OptionValues } from "./options.ts";
import type { DiskHook } from "./replicated-disks.ts";

/** The guests the CLI builds. */
const GUEST_NAMES = ["v86", "reference", "linux"] as const;
const DEFAULT_MIB = 32;
const DEFAULT_LINUX_MIB = 128;
const DISK = "FILE[,format=F][,readonly]";

/** Options every command that builds a guest takes; both sides of a pair must use the same. */
export const GUEST_OPTIONS = {
  guest: choice("NAME", "v86: the built-in guest in the v86 PC emulator;\nreference: the reference machine in TypeScript (no emulator);\nlinux: Debian's i386 Linux in v86 (build it first: node guest/linux/build.mjs)", GUEST_NAMES, { default: "v86" }),
  "guest-file": text("FILE", "a v86 guest described in JSON: kernel, initrd, cmdline, firmware, memory, disks\n(docs/embedding.md); the flags below override its keys"),
  multiboot: text("FILE", "boot this multiboot kernel"),
  bzimage: text("FILE", "boot this Linux kernel (bzImage)"),
  initrd: text("FILE", "the kernel's initial ramdisk"),
  cmdline: text("TEXT", "the kernel's command line"),
  bios: text("FILE", "the system BIOS image"),
  "vga-bios": text("FILE", "the VGA BIOS image"),
  hda: text(DISK, "the first hard disk: an image of any format (probed unless given)"),
  hdb: text(DISK, "the second hard disk"),
  cdrom: text(DISK, "the CD-ROM image (always read-only)"),
  fda: text(DISK, "the floppy image"),
  "boot-order": text("ORDER", "the drives the BIOS tries, in order: e.g. cdrom,hda,fda (or v86's number, 0x123)"),
  disk: text("FILE", "the Linux guest's ext4 data disk image, this side's own (default: a fresh copy of the built one)"),
  memory: number("MIB", "guest RAM in MiB (a guest file's own when it gives one; 128 for the Linux guest)", { integer: true, min: 4, max: 1920, shown: String(DEFAULT_MIB) }),
  dirty: number("F", "the built-in guests: fraction of RAM pages the guest writes per tick", { min: 0, max: 1, default: 0.001 }),
  hz: number("N", "the built-in v86 guest: ticks per second", { integer: true, min: 1, max: 1000, default: 20 }),
  json: flag("print JSON, one object a line"),
} as const;

/** The values of {@link GUEST_OPTIONS} that build the guest. */
export type GuestValues = Omit<OptionValues<typeof GUEST_OPTIONS>, "json">;

/** The options that describe a v86 guest (beside --guest-file), as the guest description's keys. */
const DESCRIBING = {
  multiboot: "multiboot", bzimage: "bzimage", initrd: "initrd", cmdline: "cmdline", bios: "bios", "vga-bios": "vgaBios",
  hda: "hda", hdb: "hdb", cdrom: "cdrom", fda: "fda", "boot-order": "bootOrder",
} as const;
/** Those whose value is a file: another process gets them as absolute paths. */
const PATHS = new Set(["multiboot", "bzimage", "initrd", "bios", "vga-bios", "hda", "hdb", "cdrom", "fda"]);
/** The drives a guest writes to, unless opened read-only (a CD-ROM never is written). */
const WRITABLE_SLOTS = ["hda", "hdb", "fda"] as const;

/** A machine the CLI built, and how to let it go. */
export interface CliGuest {
  machine: Machine;
  /** Stops the guest for good (v86: frees the emulator; closes the guest's disk images). */
  close(): Promise<void>;
  /** The options, as arguments, that build the same guest in another process. */
  args: string[];
  /** Whether two saves of the paused machine's device state are byte for byte equal (for digests). */
  stableDevices: boolean;
  /** The Linux guest's data disk image. */
  diskPath?: string;
  /**
   * How long a primary waits for its standby to acknowledge a checkpoint, when longer than the
   * sender's default: the Linux guest's first checkpoint carries its whole disk and tens of MB
   * of RAM, which a loaded machine can take more than the default to apply.
   */
  responseTimeoutMs?: number;
  /** The guest's network card, when built with `network`. */
  nic?: FrameSink;
}

/** How {@link guestFrom} builds the guest. */
export interface GuestFromOptions {
  /**
   * Give a described guest fresh images of its writable disks in this folder (raw, of the same
   * sizes) instead of the images the description names: a standby on its primary's own host must
   * not write the primary's images. Its first checkpoint brings it their contents.
   */
  ownDisksIn?: string;
  /**
   * The Linux guest only: a side that "runs" it (the default) boots it from its boot snapshot and
   * starts its workload; a side that "receives" it from a stream only builds the machine.
   */
  role?: GuestRole;
  /** Called with each writable disk image once opened (the Linux guest's data disk too): returns the disk the machine gets (see OpenGuestOptions). */
  disk?: DiskHook;
  /**
   * Connect the guest's network card (a v86 guest's NE2000) to tandem: its frames become outputs
   * of channel "net0", and {@link CliGuest.nic} takes frames for it. The Linux guest then runs
   * its network workload (DHCP, and TCP services on ports 80 to 82) instead of the file one.
   */
  network?: boolean;
}

/**
 * Builds the guest the options name. --dirty is the fraction of RAM pages written per tick
 * (the reference machine ticks every millisecond, the v86 guest --hz times a second).
 */
export async function guestFrom(values: GuestValues, options: GuestFromOptions = {}): Promise<CliGuest> {
  const onImage = values.guest === "reference" && values.hda !== undefined;
  const described = onImage ? undefined : describedGuest(values);
  if (options.network && !described && values.guest !== "linux") {
    throw new TandemError(ErrorCode.BadArgument, `--net needs a guest with a network driver: --guest linux, or a v86 guest of your own (--guest-file, --bzimage...); --guest ${values.guest} has none`);
  }
  if (onImage) return referenceOnImage(values, options);
  if (described) return describedFrom(options.ownDisksIn === undefined ? described : withOwnDisks(described, options.ownDisksIn), values, options);
  const { dirty, hz } = values;
  if (values.disk !== undefined && values.guest !== "linux") throw new TandemError(ErrorCode.BadArgument, `--disk is the Linux guest's; --guest ${values.guest} keeps its disk in memory`);
  if (values.guest === "linux") {
    const mib = values.memory ?? DEFAULT_LINUX_MIB;
    const linux = await linuxCliGuest(mib, values.disk, options.role ?? "runs", options.disk, options.network ?? false);
    return {
      machine: linux.machine, args: ["--guest", "linux", "--memory", String(mib)], stableDevices: false, close: linux.close, diskPath: linux.diskPath, responseTimeoutMs: 300_000,
      nic: linux.machine.nic,
    };
  }
  const mib = values.memory ?? DEFAULT_MIB;
  const args = ["--guest", values.guest, "--memory", String(mib), "--dirty", String(dirty), "--hz", String(hz)];
  const pages = (mib << 20) / 4096;
  const dirtyPages = Math.round(pages * dirty);
  if (values.guest === "reference") {
    const machine = new ReferenceMachine({ memoryBytes: mib << 20, dirtyPages: Math.max(1, dirtyPages), tickMs: 1 });
    return { machine, args, stableDevices: true, close: async () => machine.pause() };
  }
  if (values.guest === "v86") {
    // The guest stamps sectors 0..255: a 256 KiB disk holds them, and is cheap to hash per checkpoint.
    const machine = await V86Machine.create({ memoryBytes: mib << 20, cmdline: `hz=${hz} dirty=${dirtyPages} disk=1`, disk: new MemoryDisk(256 * 1024) });
    return { machine, args, stableDevices: false, close: () => machine.destroy() };
  }
  throw new TandemError(ErrorCode.BadArgument, `--guest ${values.guest}: v86 (the built-in guest in v86) or reference (no emulator)`);
}

/** The v86 guest that --guest-file and the describing flags give (the flags win), if any is given. */
function describedGuest(values: GuestValues): GuestDescription | undefined {
  const given = (Object.keys(DESCRIBING) as (keyof typeof DESCRIBING)[]).filter((name) => values[name] !== undefined);
  const file = values["guest-file"];
  if (file === undefined && given.length === 0) return undefined;
  if (values.guest === "reference" || values.guest === "linux") {
    throw new TandemError(ErrorCode.BadArgument, `--guest ${values.guest} takes no ${file !== undefined ? "--guest-file" : `--${given[0]}`}: a guest file and the kernel and disk flags describe a v86 guest`);
  }
  const flags: Record<string, string> = {};
  for (const name of given) flags[DESCRIBING[name]] = values[name]!;
  if (values.memory !== undefined) flags.memory = String(values.memory);
  return { ...(file !== undefined ? readGuestFile(file) : {}), ...guestFromFlags(flags) };
}

/** `description` with each writable disk replaced by a new raw image of its size in `folder`. */
function withOwnDisks(description: GuestDescription, folder: string): GuestDescription {
  // Opened read-only only to check every file and learn the sizes; nothing of the primary's is written.
  const readOnly: GuestDescription = { ...description };
  for (const slot of WRITABLE_SLOTS) {
    const d = description[slot];
    if (d) readOnly[slot] = { ...d, readOnly: true };
  }
  const probe = openGuest(readOnly);
  const own: GuestDescription = { ...description };
  try {
    for (const slot of WRITABLE_SLOTS) {
      const d = description[slot];
      const disk = probe.options[slot];
      if (!d || d.readOnly || !disk) continue;
      const path = join(folder, `${slot}.raw`);
      createImage(path, "raw", { size: disk.size });
      own[slot] = { path, format: "raw" };
    }
  } finally {
    probe.close();
  }
  return own;
}

/** A described guest, opened and built; its arguments name every file by absolute path. */
async function describedFrom(description: GuestDescription, values: GuestValues, open: OpenGuestOptions & { network?: boolean }): Promise<CliGuest> {
  const args = ["--guest", "v86"];
  if (values["guest-file"] !== undefined) args.push("--guest-file", resolve(values["guest-file"]));
  for (const name of Object.keys(DESCRIBING) as (keyof typeof DESCRIBING)[]) {
    const value = values[name];
    if (value !== undefined) args.push(`--${name}`, PATHS.has(name) ? resolve(value) : value);
  }
  if (values.memory !== undefined) args.push("--memory", String(values.memory));
  const guest = openGuest(description, open);
  let machine: V86Machine;
  try {
    machine = await V86Machine.create({ ...guest.options, network: open.network ?? false });
  } catch (error) {
    guest.close();
    throw error;
  }
  return {
    machine, args, stableDevices: false, nic: machine.nic,
    close: async () => {
      await machine.destroy();
      guest.close();
    },
  };
}

/**
 * The reference machine on an image file (`--guest reference --hda FILE[,format=F]`): its disk
 * checks run against the image, so replication of image files can be tried without an emulator.
 */
function referenceOnImage(values: GuestValues, open: OpenGuestOptions): CliGuest {
  const given = (Object.keys(DESCRIBING) as (keyof typeof DESCRIBING)[]).filter((name) => name !== "hda" && values[name] !== undefined);
  if (given.length > 0 || values["guest-file"] !== undefined) {
    throw new TandemError(ErrorCode.BadArgument, `--guest reference takes --hda and no ${given.length > 0 ? `--${given[0]}` : "--guest-file"}: those describe a v86 guest`);
  }
  const [file, ...settings] = values.hda!.split(",");
  const format = settings.find((s) => s.startsWith("format="))?.slice("format=".length);
  const path = resolve(file);
  let image: Disk = openDisk(path, { format });
  try {
    image = open.disk ? open.disk("hda", path, image) : image;
  } catch (error) {
    image.close();
    throw error;
  }
  const { dirty } = values;
  const mib = values.memory ?? DEFAULT_MIB;
  const dirtyPages = Math.max(1, Math.round(((mib << 20) / 4096) * dirty));
  const machine = new ReferenceMachine({ memoryBytes: mib << 20, dirtyPages, tickMs: 1, disk: image });
  const args = ["--guest", "reference", "--memory", String(mib), "--dirty", String(dirty), "--hda", path + (format ? `,format=${format}` : "")];
  return {
    machine, args, stableDevices: true,
    close: async () => {
      machine.pause();
      image.close();
    },
  };
}

/**
 * What a guest's released output says: its counter lines and disk-error reports. Outputs are a
 * byte stream (an output may end mid-line, where a checkpoint cut it), so lines are re-joined.
 */
export class CounterLog {
  /** Counters in the order they were seen. */
  readonly counters: number[] = [];
  /** The highest disk-error count the guest reported. */
  diskErrors = 0;
  #partial = "";

  /** Reads the next output, in order. */
  see(text: string): void {
    const lines = (this.#partial + text).split("\n");
    this.#partial = lines.pop()!;
    for (const line of lines) {
      const counter = /^counter (\d+)$/.exec(line);
      if (counter) this.counters.push(Number(counter[1]));
      const errors = /^disk errors (\d+)$/.exec(line);
      if (errors) this.diskErrors = Math.max(this.diskErrors, Number(errors[1]));
    }
  }

  /** The last counter seen, or 0. */
  get last(): number {
    return this.counters.at(-1) ?? 0;
  }
}
