/**
 * The identity of a base image (a backing file two overlays share): the SHA-256 of what the
 * guest reads from it. Two sides whose overlays stand on bases with the same identity and size
 * need only copy the overlay (docs/replication.md, "Disks"). Hashing reads the whole base once;
 * the result is kept beside it (`BASE.tandem-identity`) and reused while the file's size and
 * modification time stay the same.
 */

import { createHash } from "node:crypto";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import type { Disk } from "../disk/disk.ts";

const CHUNK = 1 << 20;

interface Cached {
  fileSize: number;
  mtimeMs: number;
  virtualSize: number;
  identity: string;
}

/** The identity of `base`: 32 bytes. */
export function baseIdentityOf(base: Disk): Uint8Array {
  const file = base.info().fileName;
  const cachePath = `${file}.tandem-identity`;
  let stat: { size: number; mtimeMs: number } | undefined;
  try {
    stat = statSync(file);
    const cached = JSON.parse(readFileSync(cachePath, "utf8")) as Cached;
    if (cached.fileSize === stat.size && cached.mtimeMs === stat.mtimeMs && cached.virtualSize === base.size && /^[0-9a-f]{64}$/.test(cached.identity)) {
      return Uint8Array.from(cached.identity.match(/../g)!, (h) => parseInt(h, 16));
    }
  } catch {
    // no cache yet, or an unreadable one: hash
  }
  const hash = createHash("sha256");
  const buffer = new Uint8Array(CHUNK);
  for (let at = 0; at < base.size; at += CHUNK) {
    const piece = buffer.subarray(0, Math.min(CHUNK, base.size - at));
    base.readInto(at, piece);
    hash.update(piece);
  }
  const identity = new Uint8Array(hash.digest());
  if (stat !== undefined) {
    const cached: Cached = { fileSize: stat.size, mtimeMs: stat.mtimeMs, virtualSize: base.size, identity: [...identity].map((b) => b.toString(16).padStart(2, "0")).join("") };
    try {
      writeFileSync(cachePath, JSON.stringify(cached));
    } catch {
      // a base in a read-only place: hash again next time
    }
  }
  return identity;
}
