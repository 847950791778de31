/**
 * A digest of a machine's whole state (every region, every disk, the device state), to check
 * across processes that two machines hold the same checkpoint without shipping the bytes.
 */

import { createHash } from "node:crypto";
import type { Machine } from "./machine.ts";

/** SHA-256 (hex) over RAM regions, disks and device state, in that order; the machine must be paused. */
export function stateDigest(machine: Machine): string {
  const hash = createHash("sha256");
  for (const region of machine.memory) hash.update(region.bytes());
  for (const disk of machine.disks) hash.update(disk.read(0, disk.size));
  hash.update(machine.saveDevices());
  return hash.digest("hex");
}
