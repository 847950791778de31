/**
 * A digest of a machine's whole state (every region, every disk, the device state), to check
 * across processes that two machines hold the same checkpoint without shipping the bytes.
 */

import { createHash } from "node:crypto";
import type { Machine } from "./machine.ts";

/**
 * SHA-256 (hex) over RAM regions, disks and device state, in that order; the machine must be
 * paused. `devices: false` leaves the device state out, for emulators whose saved state is not
 * byte-stable (v86 records timer bookkeeping that differs between two saves of one paused machine).
 */
export function stateDigest(machine: Machine, options: { devices?: boolean } = {}): string {
  const hash = createHash("sha256");
  for (const region of machine.memory) hash.update(region.bytes());
  for (const disk of machine.disks) hash.update(disk.read(0, disk.size));
  if (options.devices ?? true) hash.update(machine.saveDevices());
  return hash.digest("hex");
}

/** SHA-256 (hex) over disk contents, in order: what `tandem primary --disk-digests` reports. */
export function disksDigest(disks: readonly Uint8Array[]): string {
  const hash = createHash("sha256");
  for (const disk of disks) hash.update(disk);
  return hash.digest("hex");
}
