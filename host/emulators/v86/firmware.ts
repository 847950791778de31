/**
 * The BIOS a v86 guest boots on when its user names none: Debian's SeaBIOS (package `seabios`),
 * the one tandem's Linux guest is tested with. v86 needs a BIOS for everything but a multiboot
 * kernel: a bzImage is started by an option ROM the BIOS runs, and disks and CD-ROMs are booted
 * by the BIOS itself.
 */

import { readFileSync } from "node:fs";
import { ErrorCode, TandemError } from "../../errors.ts";

/** Where Debian's `seabios` package installs the images v86 takes as `bios` and `vga_bios`. */
export const SEABIOS_PATH = "/usr/share/seabios/bios.bin";
export const SEABIOS_VGA_PATH = "/usr/share/seabios/vgabios.bin";

/** A system BIOS and, optionally, a VGA BIOS. */
export interface Firmware {
  bios: Uint8Array;
  vgaBios?: Uint8Array;
}

/** Debian's SeaBIOS, or E_EMULATOR_START naming the package when it is not installed. */
export function debianSeaBios(paths: { bios: string; vgaBios: string } = { bios: SEABIOS_PATH, vgaBios: SEABIOS_VGA_PATH }): Firmware {
  const read = (path: string): Uint8Array => {
    try {
      return new Uint8Array(readFileSync(path));
    } catch (error) {
      throw new TandemError(ErrorCode.EmulatorStart,
        `this guest needs a BIOS and none was given; the default, ${path}, cannot be read (${(error as Error).message}): ` +
        "install Debian's `seabios` package (sudo apt-get install seabios) or pass a BIOS image");
    }
  };
  return { bios: read(paths.bios), vgaBios: read(paths.vgaBios) };
}
