/**
 * tandem's Linux guest (guest/linux/README.md): Debian's i386 kernel and a busybox initramfs,
 * built by `node guest/linux/build.mjs` into guest/linux/build/. This file finds the build,
 * describes the machine for each way it boots (a bzImage, or SeaBIOS booting a disk or a
 * CD-ROM), and boots it: from a boot snapshot when one matches, else for real, saving a snapshot
 * once the guest is ready so that later runs start in seconds.
 *
 * A snapshot is valid only for the exact machine it was taken on: it is keyed by a hash of the
 * kernel, initrd and disk images, the BIOS, the command line, the memory size and the v86
 * version, and taken again when any of them changes.
 */

import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { debianSeaBios } from "../emulators/v86/firmware.ts";
import { V86_VERSION } from "../emulators/v86/v86-internals.ts";
import { V86BootOrder, V86Machine, type V86MachineOptions } from "../emulators/v86/v86-machine.ts";
import { ErrorCode, TandemError } from "../errors.ts";
import type { MachineDisk } from "../machine/machine.ts";
import { restore, save } from "../replication/save-restore.ts";

/** The one command that builds the Linux guest, from the repository's root. */
export const LINUX_BUILD_COMMAND = "node guest/linux/build.mjs";
/** The guest's RAM when none is asked for: above the 64 MiB where v86 puts the initrd, plus the initrd. */
export const LINUX_MEMORY_BYTES = 128 << 20;
/** What the guest's init prints once the data disk is mounted and it waits for a workload. */
const READY = "tandem-linux: ready";

/** How the guest boots: v86 loads the bzImage itself, or SeaBIOS boots syslinux from hda, or isolinux from the CD-ROM. */
export type LinuxBoot = "bzimage" | "disk" | "cdrom";
/** What the guest's init runs once told: the file workload and a heartbeat, the network services (init.sh) and a heartbeat, or the heartbeat alone. */
export type LinuxWorkload = "files" | "net" | "idle";

/** The built guest's files. */
export interface LinuxGuestFiles {
  dir: string;
  vmlinuz: string;
  initrd: string;
  /** The ext4 data disk's pristine image: copy it for each machine (a guest writes its disk). */
  dataImage: string;
  /** A FAT disk that boots the same kernel and initrd through syslinux. */
  bootDisk: string;
  /** An ISO 9660 CD-ROM that boots them through isolinux. */
  bootIso: string;
  /** The kernel command line the build used (also in the boot images' syslinux configuration). */
  cmdline: string;
  /** The SHA-256 of each output, from the build's manifest. */
  sha256: Record<string, string>;
}

/** guest/linux/build/, where the build script writes. */
export function defaultLinuxBuildDir(): string {
  return fileURLToPath(new URL("../../guest/linux/build/", import.meta.url));
}

/** The built guest in `dir`, or E_BAD_ARGUMENT saying the one command that builds it. */
export function linuxGuestFiles(dir = defaultLinuxBuildDir()): LinuxGuestFiles {
  const manifestPath = join(dir, "manifest.json");
  if (!existsSync(manifestPath)) {
    throw new TandemError(ErrorCode.BadArgument, `the Linux guest is not built (no ${manifestPath}); build it with: ${LINUX_BUILD_COMMAND}`);
  }
  let manifest: { cmdline?: unknown; files?: Record<string, { sha256?: unknown }> };
  try {
    manifest = JSON.parse(readFileSync(manifestPath, "utf8")) as typeof manifest;
  } catch (error) {
    throw new TandemError(ErrorCode.BadArgument, `${manifestPath} is not JSON (${(error as Error).message}); rebuild with: ${LINUX_BUILD_COMMAND} --force`);
  }
  const files: LinuxGuestFiles = {
    dir,
    vmlinuz: join(dir, "vmlinuz"),
    initrd: join(dir, "initrd.img"),
    dataImage: join(dir, "data.img"),
    bootDisk: join(dir, "boot-disk.img"),
    bootIso: join(dir, "boot.iso"),
    cmdline: typeof manifest.cmdline === "string" ? manifest.cmdline : "",
    sha256: {},
  };
  for (const name of ["vmlinuz", "initrd.img", "data.img", "boot-disk.img", "boot.iso"]) {
    const sha = manifest.files?.[name]?.sha256;
    if (typeof sha !== "string" || !existsSync(join(dir, name))) {
      throw new TandemError(ErrorCode.BadArgument, `the Linux guest in ${dir} is incomplete (${name}); rebuild it with: ${LINUX_BUILD_COMMAND} --force`);
    }
    files.sha256[name] = sha;
  }
  if (files.cmdline === "") throw new TandemError(ErrorCode.BadArgument, `${manifestPath} names no command line; rebuild with: ${LINUX_BUILD_COMMAND} --force`);
  return files;
}

/** The drives a Linux machine needs besides the data disk, opened by the caller (read-only for the boot images). */
export interface LinuxDrives {
  /** The guest's ext4 data disk (its own copy of data.img): hda for bzimage and cdrom boots, hdb for a disk boot. */
  data: MachineDisk;
  /** The syslinux boot disk (boot-disk.img), for a disk boot: hda. */
  bootDisk?: MachineDisk;
  /** The CD-ROM (boot.iso), for a cdrom boot. */
  cdrom?: MachineDisk;
}

/** The machine for `boot`: both sides of a pair build it from the same files. */
export function linuxMachineOptions(files: LinuxGuestFiles, boot: LinuxBoot, drives: LinuxDrives, memoryBytes = LINUX_MEMORY_BYTES): V86MachineOptions {
  switch (boot) {
    case "bzimage":
      return { memoryBytes, bzimage: readFileSync(files.vmlinuz), initrd: readFileSync(files.initrd), cmdline: files.cmdline, hda: drives.data };
    case "disk":
      if (!drives.bootDisk) throw new TandemError(ErrorCode.BadArgument, "a disk boot needs the boot disk (boot-disk.img) as hda");
      return { memoryBytes, hda: drives.bootDisk, hdb: drives.data, bootOrder: V86BootOrder.hdFirst };
    case "cdrom":
      if (!drives.cdrom) throw new TandemError(ErrorCode.BadArgument, "a CD-ROM boot needs the CD-ROM image (boot.iso)");
      return { memoryBytes, cdrom: drives.cdrom, hda: drives.data, bootOrder: V86BootOrder.cdFirst };
  }
}

/** The boot snapshot's key: everything that decides the booted machine's state. */
export function linuxSnapshotKey(files: LinuxGuestFiles, boot: LinuxBoot, options: V86MachineOptions): string {
  const firmware = options.bios ? { bios: options.bios, vgaBios: options.vgaBios } : debianSeaBios();
  const hash = (bytes: Uint8Array | undefined) => (bytes ? createHash("sha256").update(bytes).digest("hex") : null);
  const images: Record<LinuxBoot, string[]> = { bzimage: ["vmlinuz", "initrd.img", "data.img"], disk: ["boot-disk.img", "data.img"], cdrom: ["boot.iso", "data.img"] };
  return createHash("sha256").update(JSON.stringify({
    v86: V86_VERSION,
    boot,
    images: images[boot].map((name) => files.sha256[name]),
    cmdline: boot === "bzimage" ? files.cmdline : null,
    memoryBytes: options.memoryBytes,
    vgaMemoryBytes: options.vgaMemoryBytes ?? null,
    // A connected network card is part of the guest's identity: a snapshot of one without it is refused.
    network: options.network ?? false,
    bootOrder: options.bootOrder ?? null,
    bios: hash(firmware.bios),
    vgaBios: hash(firmware.vgaBios),
  })).digest("hex");
}

/** What {@link bootLinux} did. */
export interface LinuxBooted {
  machine: V86Machine;
  /** True when the machine came from a snapshot; false when it booted (and a snapshot was saved). */
  fromSnapshot: boolean;
  /** Wall time from the start to a machine ready for a workload. */
  bootMs: number;
  /** The snapshot file. */
  snapshot: string;
}

/**
 * Builds the machine and brings it to the point where the init waits for its workload, paused:
 * restored from the matching boot snapshot, or booted (up to `timeoutMs`) and then saved as one.
 * Send the workload with {@link startWorkload}, then resume (or replicate) the machine.
 */
export async function bootLinux(files: LinuxGuestFiles, boot: LinuxBoot, options: V86MachineOptions, settings: {
  timeoutMs?: number;
  snapshotDir?: string;
  /** Told of each line the guest prints while it boots (a snapshot restore prints none). */
  onBootLine?: (line: string) => void;
} = {}): Promise<LinuxBooted> {
  const started = performance.now();
  const dir = settings.snapshotDir ?? join(files.dir, "snapshots");
  const key = linuxSnapshotKey(files, boot, options);
  const prefix = `${boot}${options.network ? "-net" : ""}-${(options.memoryBytes ?? 0) >>> 20}m-`;
  const snapshot = join(dir, `${prefix}${key.slice(0, 24)}.tandem`);
  const machine = await V86Machine.create(options);
  try {
    if (existsSync(snapshot)) {
      await restore(machine, snapshot, { resume: false }).promise;
      return { machine, fromSnapshot: true, bootMs: performance.now() - started, snapshot };
    }
    await runUntilReady(machine, settings.timeoutMs ?? 600_000, settings.onBootLine);
    mkdirSync(dir, { recursive: true });
    for (const stale of readdirSync(dir)) if (stale.startsWith(prefix) && stale.endsWith(".tandem")) rmSync(join(dir, stale), { force: true });
    await save(machine, snapshot, { stop: true }).promise;
    return { machine, fromSnapshot: false, bootMs: performance.now() - started, snapshot };
  } catch (error) {
    await machine.destroy();
    throw error;
  }
}

/** Runs the machine until its init says it is ready, then pauses it. */
async function runUntilReady(machine: V86Machine, timeoutMs: number, onLine?: (line: string) => void): Promise<void> {
  let partial = "";
  let resolveReady!: () => void;
  const ready = new Promise<void>((resolve) => (resolveReady = resolve));
  machine.onOutput((o) => {
    const lines = (partial + new TextDecoder().decode(o.data)).split("\n");
    partial = lines.pop()!;
    for (const line of lines) {
      onLine?.(line.replace(/\r$/, ""));
      if (line.startsWith(READY)) resolveReady();
    }
  });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TandemError(ErrorCode.GuestTimeout,
      `the Linux guest did not get ready within ${timeoutMs} ms (last output: ${JSON.stringify(partial.slice(-200))})`)), timeoutMs);
  });
  machine.resume();
  try {
    await Promise.race([ready, timeout]);
  } finally {
    clearTimeout(timer);
    machine.pause();
    machine.onOutput(() => {});
  }
}

/**
 * Tells the waiting init which workload to run (one line on its console, serial0). The bytes
 * reach the emulated UART at once, so a checkpoint taken after this call carries them.
 */
export function startWorkload(machine: V86Machine, workload: LinuxWorkload): void {
  machine.emulator.serial0_send(`${workload}\n`);
}
