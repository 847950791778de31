/**
 * The guest a checkpoint stream describes: the header a machine's stream starts with (its memory
 * layout and identity), and the check a receiving machine makes before applying anything from a
 * stream (docs/replication.md, "A standby built differently").
 */

import { checkIdentity, guestIdentity } from "../machine/guest-identity.ts";
import type { Machine } from "../machine/machine.ts";
import { PAGE_SIZE } from "../memory/guest-memory.ts";
import type { StreamHeader } from "../protocol/stream/format.ts";
import { checkLayout } from "./apply-checkpoint.ts";

/** The stream header that describes `machine`: page size, memory regions, identity. */
export function streamHeaderFor(machine: Machine): StreamHeader {
  const header: StreamHeader = { pageSize: PAGE_SIZE, regions: machine.memory.map((m) => ({ size: m.size })) };
  if (machine.identity) header.identity = machine.identity.fields;
  return header;
}

/**
 * Checks that the stream whose `header` was read describes `machine`'s guest: the same identity
 * (E_GUEST_MISMATCH, listing what differs, the stream's side called `theirName` and the machine
 * `ourName`), then the same memory layout (E_STREAM_FORMAT). A stream or machine without an
 * identity is checked by its layout alone.
 */
export function checkStreamGuest(header: StreamHeader, machine: Machine, theirName: string, ourName: string): void {
  checkIdentity(header.identity && guestIdentity(header.identity), machine.identity, theirName, ourName);
  checkLayout(header, machine);
}
