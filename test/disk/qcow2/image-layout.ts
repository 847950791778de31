/**
 * Where things lie in a qcow2 file, read straight from its bytes (independently of
 * host/disk/qcow2), and byte patches to damage it: what the overlap and corruption tests aim at.
 */

import { readFileSync, openSync, writeSync, closeSync, ftruncateSync } from "node:fs";

/** A table entry: where it lies in the file and the u64 it holds (and, for L2 entries, the guest cluster it maps). */
export interface Entry {
  at: number;
  value: bigint;
  guest?: number;
}

/** The structures of one image. */
export interface Layout {
  fileSize: number;
  version: number;
  clusterSize: number;
  refcountBits: number;
  l1Offset: number;
  l1Size: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  /** Non-zero L1 entries. */
  l1: Entry[];
  /** Non-zero entries of the refcount table. */
  refcountTable: Entry[];
  /** Non-zero L2 entries of every L2 table, in file order. */
  l2: Entry[];
}

const OFFSET_MASK = 0x00ff_ffff_ffff_fe00n;

/** The offset bits of an L1, L2 or refcount table entry. */
export function offsetOf(value: bigint): number {
  return Number(value & OFFSET_MASK);
}

/** Reads the layout of the qcow2 image at `path`. */
export function layoutOf(path: string): Layout {
  const bytes = readFileSync(path);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const u64 = (at: number) => view.getBigUint64(at);
  const version = view.getUint32(4);
  const clusterSize = 2 ** view.getUint32(20);
  const l1Size = view.getUint32(36);
  const l1Offset = Number(u64(40));
  const refcountTableOffset = Number(u64(48));
  const refcountTableClusters = view.getUint32(56);
  const refcountBits = version >= 3 ? 2 ** view.getUint32(96) : 16;
  const entries = (offset: number, count: number): Entry[] => {
    const out: Entry[] = [];
    for (let i = 0; i < count && offset + i * 8 + 8 <= bytes.length; i++) {
      const value = u64(offset + i * 8);
      if (value !== 0n) out.push({ at: offset + i * 8, value });
    }
    return out;
  };
  const l1 = entries(l1Offset, l1Size);
  const l2: Entry[] = [];
  const perTable = clusterSize / 8;
  for (const entry of l1) {
    const table = offsetOf(entry.value);
    const first = ((entry.at - l1Offset) / 8) * perTable;
    for (const e of entries(table, perTable)) l2.push({ ...e, guest: first + (e.at - table) / 8 });
  }
  return {
    fileSize: bytes.length,
    version,
    clusterSize,
    refcountBits,
    l1Offset,
    l1Size,
    refcountTableOffset,
    refcountTableClusters,
    l1,
    refcountTable: entries(refcountTableOffset, (refcountTableClusters * clusterSize) / 8),
    l2,
  };
}

/** Writes the big-endian u64 `value` at `at` of the file at `path`. */
export function patchU64(path: string, at: number, value: bigint): void {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, value);
  patchBytes(path, at, bytes);
}

/** Writes `bytes` at `at` of the file at `path`. */
export function patchBytes(path: string, at: number, bytes: Uint8Array): void {
  const fd = openSync(path, "r+");
  try {
    writeSync(fd, bytes, 0, bytes.length, at);
  } finally {
    closeSync(fd);
  }
}

/** Cuts the file at `path` to `length` bytes. */
export function truncateTo(path: string, length: number): void {
  const fd = openSync(path, "r+");
  try {
    ftruncateSync(fd, length);
  } finally {
    closeSync(fd);
  }
}

/** The header's incompatible features (0 for version 2, which has none). */
export function incompatibleFeatures(path: string): bigint {
  const bytes = readFileSync(path);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return view.getUint32(4) >= 3 ? view.getBigUint64(72) : 0n;
}

/** Bit 63 of an L1 or L2 entry: COPIED (refcount exactly 1). */
export const COPIED = 1n << 63n;
/** Bit 62 of an L2 entry: compressed. */
export const COMPRESSED = 1n << 62n;
/** Incompatible feature bit 1: corrupt. */
export const CORRUPT_BIT = 2n;
