/**
 * `--guest linux` for the commands that build a guest: tandem's Linux guest (guest/linux/,
 * host/guests/linux-guest.ts), booted from its bzImage on Debian's SeaBIOS with its own copy of
 * the ext4 data disk. A side that runs the guest first (a primary, a save) restores the boot
 * snapshot (booting once to make it) and starts the file workload (with a network card: the
 * network workload); a side that receives the guest (a standby, a restore) only builds the
 * machine, which the stream fills.
 */

import { copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Disk } from "../disk/disk.ts";
import { openDisk } from "../disk/registry.ts";
import { V86Machine } from "../emulators/v86/v86-machine.ts";
import { bootLinux, linuxGuestFiles, linuxMachineOptions, startWorkload } from "../guests/linux-guest.ts";

/** Which end of a transfer a command's guest is. */
export type GuestRole = "runs" | "receives";

/** A Linux machine the CLI built: the same shape as the other CLI guests. */
export interface LinuxCliGuest {
  machine: V86Machine;
  close(): Promise<void>;
  /** The data disk image this side uses. */
  diskPath: string;
}

/**
 * Builds the Linux guest with `mib` MiB of RAM on the data disk image at `diskPath` (a fresh
 * copy of the built one, removed at close, when not given). `hook` gives the machine its disk
 * over the opened image (a replication layer), and owns the image from then on. With `network`,
 * its card is connected and a running side starts the network workload rather than the file one.
 */
export async function linuxCliGuest(mib: number, diskPath: string | undefined, role: GuestRole, hook?: (slot: "data", path: string, image: Disk) => Disk, network = false): Promise<LinuxCliGuest> {
  const files = linuxGuestFiles();
  let scratch: string | undefined;
  if (diskPath === undefined) {
    scratch = mkdtempSync(join(tmpdir(), "tandem-linux-"));
    diskPath = join(scratch, "data.img");
    copyFileSync(files.dataImage, diskPath);
  }
  const image = openDisk(diskPath, { format: "raw" });
  let disk: Disk;
  try {
    disk = hook ? hook("data", resolve(diskPath), image) : image;
  } catch (error) {
    image.close();
    if (scratch) rmSync(scratch, { recursive: true, force: true });
    throw error;
  }
  const cleanup = () => {
    disk.close();
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  };
  try {
    const options = { ...linuxMachineOptions(files, "bzimage", { data: disk }, mib << 20), network };
    let machine: V86Machine;
    if (role === "runs") {
      const tty = process.stderr.isTTY === true;
      const booted = await bootLinux(files, "bzimage", options, {
        onBootLine: tty ? (line) => process.stderr.write(`\r\x1b[Kbooting Linux (once; later runs start from a snapshot): ${line.slice(0, 60)}`) : undefined,
      });
      if (tty && !booted.fromSnapshot) process.stderr.write("\r\x1b[K");
      machine = booted.machine;
      startWorkload(machine, network ? "net" : "files");
    } else {
      machine = await V86Machine.create(options);
    }
    return {
      machine,
      diskPath,
      close: async () => {
        await machine.destroy();
        disk.flush();
        cleanup();
      },
    };
  } catch (error) {
    cleanup();
    throw error;
  }
}
