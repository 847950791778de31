/** Byte sizes as `tandem img` reads and prints them, in qemu-img's conventions. */

import { ErrorCode, TandemError } from "../../errors.ts";

/** The binary unit suffixes qemu-img takes and prints, in order: K is 2^10, M 2^20, and so on. */
const UNITS = ["", "K", "M", "G", "T", "P", "E"];

/**
 * Parses `text` (e.g. "512K", "1G", "1.5M", "4096"; bytes without a suffix, "B" allowed too) as a
 * whole number of bytes. `what` names the value in the error.
 */
export function parseSize(text: string, what: string): number {
  const match = /^(\d+(?:\.\d+)?)([bkmgtpe]?)$/i.exec(text.trim());
  const suffix = match?.[2].toUpperCase() ?? "";
  const bytes = match ? Number(match[1]) * 1024 ** Math.max(UNITS.indexOf(suffix === "B" ? "" : suffix), 0) : NaN;
  if (!Number.isSafeInteger(bytes)) {
    throw new TandemError(ErrorCode.BadArgument, `${what} '${text}' is not a size: give whole bytes or a number with K, M, G or T (512K, 1G, 1.5G)`);
  }
  return bytes;
}

/**
 * `bytes` as qemu-img prints sizes: three significant digits in the largest binary unit that keeps
 * the number below 1000 ("1 GiB", "196 KiB", "0.977 KiB", "0 B").
 */
export function humanSize(bytes: number): string {
  let unit = 0;
  while (unit < UNITS.length - 1 && bytes >= 1000 * 1024 ** unit) unit++;
  const value = Number((bytes / 1024 ** unit).toPrecision(3));
  return `${value} ${UNITS[unit]}${unit === 0 ? "" : "i"}B`;
}
