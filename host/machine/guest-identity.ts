/**
 * A guest's identity: what must be equal for two machines to hold each other's state (the same
 * kernel, BIOS, memory, command line, disk slots and sizes...), as named fields and one digest of
 * them all. It travels in the checkpoint stream header (docs/checkpoint-stream.md), so a standby,
 * a restore or a migration's destination built from a different description is refused at
 * connect, with the fields that differ named, not at takeover.
 *
 * Disk *contents* are never part of it: each side names its own image file, and the stream
 * carries the contents. Emulator adapters build the fields (v86: host/emulators/v86/v86-identity.ts).
 */

import { createHash } from "node:crypto";
import { ErrorCode, TandemError } from "../errors.ts";

/** How a field is compared and shown. */
export type IdentityFieldKind = "value" | "digest";

/** One thing the identity covers. */
export interface IdentityField {
  /** What it is, e.g. "memory", "initrd", "hda". */
  readonly name: string;
  /**
   * "value": a short human-readable value shown as it is ("128 MiB"); "digest": the SHA-256
   * (hex) of something too big to show (a kernel), shown as "content differs".
   */
  readonly kind: IdentityFieldKind;
  readonly value: string;
}

/** A guest's identity: its fields, in the order the adapter lists them, and their digest. */
export interface GuestIdentity {
  /** SHA-256 (hex) over every field, in order: equal digests, equal guests. */
  readonly digest: string;
  readonly fields: readonly IdentityField[];
}

const ENCODER = new TextEncoder();

/** The SHA-256 (hex) of `bytes`: a "digest" field's value. */
export function contentDigest(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/**
 * An identity from its fields. Names must be unique (the stream writer also holds them to its
 * size limits, docs/checkpoint-stream.md); the digest
 * hashes each field as its kind, name and value with their lengths, so no two lists collide
 * by shifting bytes from one field into the next.
 */
export function guestIdentity(fields: readonly IdentityField[]): GuestIdentity {
  const names = new Set<string>();
  const hash = createHash("sha256");
  const head = new DataView(new ArrayBuffer(8));
  for (const { name, kind, value } of fields) {
    const nameBytes = ENCODER.encode(name);
    const valueBytes = ENCODER.encode(value);
    if (names.has(name)) throw new TandemError(ErrorCode.BadArgument, `identity field "${name}" appears twice`);
    if (nameBytes.length === 0) throw new TandemError(ErrorCode.BadArgument, "an identity field without a name");
    if (kind !== "value" && kind !== "digest") throw new TandemError(ErrorCode.BadArgument, `identity field "${name}" has kind ${String(kind)}`);
    names.add(name);
    head.setUint8(0, kind === "value" ? 1 : 2);
    head.setUint16(2, nameBytes.length, true);
    head.setUint32(4, valueBytes.length, true);
    hash.update(new Uint8Array(head.buffer));
    hash.update(nameBytes);
    hash.update(valueBytes);
  }
  return { digest: hash.digest("hex"), fields: fields.map((f) => ({ name: f.name, kind: f.kind, value: f.value })) };
}

/**
 * What differs between the identity `theirs` (named `theirName`, e.g. "primary") and `ours`
 * (`ourName`), one phrase per field in the order first seen: "memory: primary 128 MiB, standby
 * 64 MiB", "initrd: content differs", "cdrom: standby has none". Empty when they are equal.
 */
export function identityDifferences(theirs: GuestIdentity, ours: GuestIdentity, theirName: string, ourName: string): string[] {
  if (theirs.digest === ours.digest) return [];
  const mine = new Map(ours.fields.map((f) => [f.name, f]));
  const differences: string[] = [];
  for (const field of theirs.fields) {
    const other = mine.get(field.name);
    mine.delete(field.name);
    if (!other) differences.push(`${field.name}: ${ourName} has none`);
    else if (other.kind !== field.kind || other.value !== field.value) {
      differences.push(field.kind === "digest" && other.kind === "digest"
        ? `${field.name}: content differs`
        : `${field.name}: ${theirName} ${show(field)}, ${ourName} ${show(other)}`);
    }
  }
  for (const field of mine.values()) differences.push(`${field.name}: ${theirName} has none`);
  // Equal fields in another order still make another digest: say so rather than nothing.
  if (differences.length === 0) differences.push("the same fields in another order");
  return differences;
}

/**
 * Throws E_GUEST_MISMATCH if `theirs` is not `ours`, listing what differs. Either side may have
 * no identity (a stream written before identities, a machine whose adapter gives none): then
 * there is nothing to compare, and the stream's memory layout is all that is checked.
 */
export function checkIdentity(theirs: GuestIdentity | undefined, ours: GuestIdentity | undefined, theirName: string, ourName: string): void {
  if (!theirs || !ours) return;
  const differences = identityDifferences(theirs, ours, theirName, ourName);
  if (differences.length > 0) {
    throw new TandemError(ErrorCode.GuestMismatch,
      `the ${theirName}'s guest is not this ${ourName}'s: ${differences.join("; ")}. Build both from the same guest description (disk images may differ, their sizes and slots may not)`);
  }
}

/** Bytes as an identity value shows them: MiB where whole (every RAM size), else KiB or bytes. */
export function formatSize(bytes: number): string {
  if (bytes > 0 && bytes % (1 << 20) === 0) return `${bytes / (1 << 20)} MiB`;
  if (bytes > 0 && bytes % 1024 === 0) return `${bytes / 1024} KiB`;
  return `${bytes} bytes`;
}

/** A field as a message shows it. */
function show(field: IdentityField): string {
  return field.kind === "digest" ? `sha256 ${field.value.slice(0, 12)}…` : field.value;
}
