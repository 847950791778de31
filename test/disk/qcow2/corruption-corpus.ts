/**
 * A generated corpus of damaged qcow2 images: base images made by qemu-img and qemu-io (cluster
 * sizes 512 B, 64 KiB and 2 MiB; refcount widths 1, 16 and 64 bits in version 3, and version 2,
 * whose width is always 16), each damaged one way. Deterministic: a case is its base, its kind and
 * a seed for host/prng.ts, so a failure names a case that can be made again.
 */

import { readFileSync } from "node:fs";
import { readRefcount, writeRefcount } from "../../../host/disk/qcow2/refcount-entry.ts";
import { seededRandom } from "../../../host/prng.ts";
import { qemuImg, qemuIo } from "../../support/qemu.ts";
import { COMPRESSED, COPIED, type Entry, type Layout, layoutOf, offsetOf, patchBytes, patchU64, truncateTo } from "./image-layout.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

/** One kind of base image. */
export interface Base {
  clusterSize: number;
  refcountBits: number;
  version: 2 | 3;
}

/** Every base: 3 cluster sizes × (3 refcount widths in version 3, 16 bits in version 2). */
export const BASES: readonly Base[] = [512, 64 * KiB, 2 * MiB].flatMap((clusterSize) => [
  ...[1, 16, 64].map((refcountBits) => ({ clusterSize, refcountBits, version: 3 as const })),
  { clusterSize, refcountBits: 16, version: 2 as const },
]);

/** A short name for a base. */
export function baseName(base: Base): string {
  return `cs${base.clusterSize}-rb${base.refcountBits}-v${base.version}`;
}

/**
 * Makes a base image at `path`: plain data at the start (two clusters) and one cluster in the
 * middle (another L2 table with 512-byte clusters), two compressed clusters (not with 1-bit
 * refcounts) and (version 3) a zeroed cluster.
 */
export function makeBase(path: string, base: Base): void {
  const cs = base.clusterSize;
  const size = Math.max(4 * MiB, 8 * cs);
  const compat = base.version === 3 ? "1.1" : "0.10";
  qemuImg("create", "-q", "-f", "qcow2", "-o", `cluster_size=${cs},refcount_bits=${base.refcountBits},compat=${compat}`, path, String(size));
  // Even byte patterns: data read as an L2 table (through a misaligned L1 entry) has no ZERO flags,
  // which qemu-img's repair would "fix" one synced write at a time, for minutes.
  const commands = [`write -P 0x20 0 ${2 * cs}`, `write -P 0x42 ${size / 2} ${cs}`];
  // Compressed clusters share host clusters, which 1-bit refcounts cannot count.
  if (base.refcountBits > 1) commands.push(`write -c -P 0x64 ${cs * Math.floor(size / 4 / cs)} ${2 * cs}`);
  if (base.version === 3) commands.push(`write -z ${cs * Math.floor((3 * size) / 4 / cs)} ${cs}`);
  qemuIo(path, commands);
}

/** What a damage did, and what the test should expect of a write. */
export interface Damage {
  what: string;
  /**
   * A guest offset whose cluster's L2 entry now points (COPIED) into the image's metadata: a
   * write there must be refused as an overlap, marking the image corrupt.
   */
  overlapWrite?: number;
}

type Rand = () => number;
/** Damages the image at `path` (of layout `l`), or returns null if the kind does not apply. */
type Apply = (path: string, l: Layout, rand: Rand) => Damage | null;

const pick = <T>(rand: Rand, items: readonly T[]): T | undefined => items[Math.floor(rand() * items.length)];
const hex = (n: number | bigint) => `0x${n.toString(16)}`;
const dataEntries = (l: Layout) => l.l2.filter((e) => (e.value & COMPRESSED) === 0n && offsetOf(e.value) !== 0);
const compressedEntries = (l: Layout) => l.l2.filter((e) => (e.value & COMPRESSED) !== 0n);
/** The first cluster boundary at or after the end of the file. */
const endCluster = (l: Layout) => Math.ceil(l.fileSize / l.clusterSize) * l.clusterSize;
/** An offset that is not cluster-aligned: off by whole sectors where the cluster has several, else by reserved bits. */
const misalign = (l: Layout, rand: Rand) => (l.clusterSize > 512 ? 512 * (1 + Math.floor(rand() * (l.clusterSize / 512 - 1))) : 8 * (1 + Math.floor(rand() * 31)));
/** Flips one offset bit of `entry` (bits 9 up to a little past the file's size). */
function flipOffsetBit(path: string, entry: Entry, l: Layout, rand: Rand, what: string): Damage {
  const top = Math.max(10, Math.ceil(Math.log2(l.fileSize)) + 2);
  const bit = 9 + Math.floor(rand() * (top - 9));
  patchU64(path, entry.at, entry.value ^ (1n << BigInt(bit)));
  return { what: `${what} at ${hex(entry.at)}: bit ${bit} flipped` };
}
/** Metadata an entry may be pointed into: [name, offset]. */
function metadataTargets(l: Layout, ownTable: number): [string, number][] {
  const targets: [string, number][] = [
    ["the L1 table", l.l1Offset],
    ["the refcount table", l.refcountTableOffset],
    ["its own L2 table", ownTable],
  ];
  if (l.refcountTable.length > 0) targets.push(["refcount block 0", offsetOf(l.refcountTable[0].value)]);
  return targets;
}
/** Sets the stored refcount of host cluster `cluster` to `value` (in the block covering it, if any). */
function setRefcount(path: string, l: Layout, cluster: number, value: number): boolean {
  const perBlock = (l.clusterSize * 8) / l.refcountBits;
  const tableEntry = l.refcountTable.find((e) => e.at === l.refcountTableOffset + Math.floor(cluster / perBlock) * 8);
  if (tableEntry === undefined) return false;
  const blockOffset = offsetOf(tableEntry.value);
  const block = new Uint8Array(readFileSync(path).subarray(blockOffset, blockOffset + l.clusterSize));
  if (block.length < l.clusterSize) return false;
  const max = l.refcountBits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** l.refcountBits - 1;
  writeRefcount(block, cluster % perBlock, l.refcountBits, Math.min(value, max));
  patchBytes(path, blockOffset, block);
  return true;
}
function refcountOf(path: string, l: Layout, cluster: number): number {
  const perBlock = (l.clusterSize * 8) / l.refcountBits;
  const tableEntry = l.refcountTable.find((e) => e.at === l.refcountTableOffset + Math.floor(cluster / perBlock) * 8);
  if (tableEntry === undefined) return 0;
  const blockOffset = offsetOf(tableEntry.value);
  return readRefcount(new Uint8Array(readFileSync(path).subarray(blockOffset, blockOffset + l.clusterSize)), cluster % perBlock, l.refcountBits, "refcount block");
}
/** Truncates the file inside the cluster at `offset`: at its start or part-way through. */
function truncateThrough(path: string, l: Layout, offset: number, rand: Rand, what: string): Damage | null {
  if (offset <= 0 || offset >= l.fileSize) return null;
  const cut = Math.min(l.fileSize - 1, offset + (rand() < 0.5 ? 0 : 512 * Math.floor((rand() * l.clusterSize) / 512)));
  truncateTo(path, cut);
  return { what: `truncated at ${hex(cut)}, through ${what} at ${hex(offset)}` };
}

/** The kinds of damage, by name. */
export const KINDS: Readonly<Record<string, Apply>> = {
  "l1-bitflip": (path, l, rand) => {
    const entry = pick(rand, l.l1);
    return entry ? flipOffsetBit(path, entry, l, rand, "L1 entry") : null;
  },
  "l1-misaligned": (path, l, rand) => {
    const entry = pick(rand, l.l1);
    if (!entry) return null;
    const delta = misalign(l, rand);
    patchU64(path, entry.at, entry.value + BigInt(delta));
    return { what: `L1 entry at ${hex(entry.at)} moved by ${delta} bytes` };
  },
  "l1-past-eof": (path, l, rand) => {
    const entry = pick(rand, l.l1);
    if (!entry) return null;
    const target = endCluster(l) + Math.floor(rand() * 16) * l.clusterSize;
    patchU64(path, entry.at, COPIED | BigInt(target));
    return { what: `L1 entry at ${hex(entry.at)} pointed past the end, at ${hex(target)}` };
  },
  "l1-into-metadata": (path, l, rand) => {
    const entry = pick(rand, l.l1);
    if (!entry) return null;
    const [name, target] = pick(rand, metadataTargets(l, offsetOf(entry.value)).filter(([n]) => n !== "its own L2 table")) ?? ["the L1 table", l.l1Offset];
    patchU64(path, entry.at, COPIED | BigInt(target));
    return { what: `L1 entry at ${hex(entry.at)} pointed at ${name}` };
  },
  "l2-bitflip": (path, l, rand) => {
    const entry = pick(rand, dataEntries(l));
    return entry ? flipOffsetBit(path, entry, l, rand, "L2 entry") : null;
  },
  "l2-misaligned": (path, l, rand) => {
    const entry = pick(rand, dataEntries(l));
    if (!entry) return null;
    const delta = misalign(l, rand);
    patchU64(path, entry.at, entry.value + BigInt(delta));
    return { what: `L2 entry at ${hex(entry.at)} moved by ${delta} bytes` };
  },
  "l2-past-eof": (path, l, rand) => {
    const entry = pick(rand, dataEntries(l));
    if (!entry) return null;
    const target = endCluster(l) + (5 + Math.floor(rand() * 10)) * l.clusterSize;
    patchU64(path, entry.at, COPIED | BigInt(target));
    return { what: `L2 entry at ${hex(entry.at)} pointed past the end, at ${hex(target)}` };
  },
  "l2-into-metadata": (path, l, rand) => {
    const entry = pick(rand, dataEntries(l));
    if (!entry || entry.guest === undefined) return null;
    const ownTable = entry.at - (entry.at % l.clusterSize);
    const [name, target] = pick(rand, metadataTargets(l, ownTable)) ?? ["the L1 table", l.l1Offset];
    patchU64(path, entry.at, COPIED | BigInt(target));
    return { what: `L2 entry at ${hex(entry.at)} pointed at ${name}`, overlapWrite: entry.guest * l.clusterSize };
  },
  "refcount-wrong": (path, l, rand) => {
    const entry = pick(rand, [...dataEntries(l), ...l.l1]);
    if (!entry) return null;
    const cluster = offsetOf(entry.value) / l.clusterSize;
    const value = pick(rand, [0, 2, 3]) ?? 0;
    return setRefcount(path, l, cluster, value) ? { what: `refcount of cluster ${cluster} set to ${value}` } : null;
  },
  "refcount-table-misaligned": (path, l, rand) => {
    const entry = pick(rand, l.refcountTable);
    if (!entry) return null;
    const delta = misalign(l, rand);
    patchU64(path, entry.at, entry.value + BigInt(delta));
    return { what: `refcount table entry at ${hex(entry.at)} moved by ${delta} bytes` };
  },
  "refcount-table-past-eof": (path, l, rand) => {
    const entry = pick(rand, l.refcountTable);
    if (!entry) return null;
    const target = endCluster(l) + Math.floor(rand() * 16) * l.clusterSize;
    patchU64(path, entry.at, BigInt(target));
    return { what: `refcount table entry at ${hex(entry.at)} pointed past the end, at ${hex(target)}` };
  },
  "refcount-table-into-metadata": (path, l, rand) => {
    const entry = pick(rand, l.refcountTable);
    if (!entry) return null;
    const [name, target] = pick(rand, [["the L1 table", l.l1Offset] as const, ...l.l1.map((e) => ["an L2 table", offsetOf(e.value)] as const)]) ?? ["the L1 table", l.l1Offset];
    patchU64(path, entry.at, BigInt(target));
    return { what: `refcount table entry at ${hex(entry.at)} pointed at ${name}` };
  },
  "double-reference-data": (path, l, rand) => {
    const entries = dataEntries(l);
    if (entries.length < 2) return null;
    const a = pick(rand, entries) as Entry;
    const b = pick(rand, entries.filter((e) => e !== a)) as Entry;
    patchU64(path, a.at, b.value);
    return { what: `L2 entry at ${hex(a.at)} made to share the cluster of ${hex(b.at)}` };
  },
  "double-reference-refcount-block": (path, l, rand) => {
    const entry = pick(rand, l.refcountTable);
    if (!entry) return null;
    const other = l.refcountTableOffset + 8 * (1 + Math.floor(rand() * 4));
    if (l.refcountTable.some((e) => e.at === other)) return null;
    patchU64(path, other, entry.value);
    return { what: `refcount table entry at ${hex(other)} made to name the block of ${hex(entry.at)} too` };
  },
  "double-reference-l2-table": (path, l, rand) => {
    const entry = pick(rand, l.l1);
    if (!entry) return null;
    const free = [...Array(Math.min(l.l1Size, 64)).keys()].map((i) => l.l1Offset + 8 * i).filter((at) => !l.l1.some((e) => e.at === at));
    const at = pick(rand, free);
    if (at === undefined) return null;
    patchU64(path, at, entry.value);
    return { what: `L1 entry at ${hex(at)} made to share the L2 table of ${hex(entry.at)}` };
  },
  "truncate-l1": (path, l, rand) => truncateThrough(path, l, l.l1Offset - (l.l1Offset % l.clusterSize), rand, "the L1 table"),
  "truncate-l2": (path, l, rand) => {
    const entry = pick(rand, l.l1);
    return entry ? truncateThrough(path, l, offsetOf(entry.value), rand, "an L2 table") : null;
  },
  "truncate-refcount-table": (path, l, rand) => truncateThrough(path, l, l.refcountTableOffset, rand, "the refcount table"),
  "truncate-refcount-block": (path, l, rand) => {
    const entry = pick(rand, l.refcountTable);
    return entry ? truncateThrough(path, l, offsetOf(entry.value), rand, "a refcount block") : null;
  },
  "truncate-data": (path, l, rand) => {
    const entry = pick(rand, dataEntries(l));
    return entry ? truncateThrough(path, l, offsetOf(entry.value), rand, "a data cluster") : null;
  },
  "truncate-and-wrong-refcount": (path, l, rand) => {
    const entries = dataEntries(l).filter((e) => offsetOf(e.value) + l.clusterSize < l.fileSize);
    const victim = pick(rand, entries);
    const last = entries.reduce<Entry | undefined>((a, e) => (a === undefined || offsetOf(e.value) > offsetOf(a.value) ? e : a), undefined);
    if (!victim || !last || last === victim) return null;
    const cluster = offsetOf(victim.value) / l.clusterSize;
    const before = refcountOf(path, l, cluster);
    if (!setRefcount(path, l, cluster, before === 0 ? 1 : 0)) return null;
    const cut = truncateThrough(path, l, offsetOf(last.value), rand, "the last data cluster");
    return cut ? { what: `${cut.what}; refcount of cluster ${cluster} changed from ${before}` } : null;
  },
  "compressed-bitflip": (path, l, rand) => {
    const entry = pick(rand, compressedEntries(l));
    return entry ? flipOffsetBit(path, entry, l, rand, "compressed L2 entry") : null;
  },
  "compressed-past-eof": (path, l, rand) => {
    const entry = pick(rand, compressedEntries(l));
    if (!entry) return null;
    // The host offset occupies the low 62 - (cluster_bits - 8) bits; past the end by a few clusters.
    const offsetBits = 62n - BigInt(Math.log2(l.clusterSize) - 8);
    const target = BigInt(endCluster(l) + Math.floor(rand() * 8) * l.clusterSize + 512 * Math.floor(rand() * 4));
    const value = (entry.value & ~((1n << offsetBits) - 1n)) | target;
    patchU64(path, entry.at, value);
    return { what: `compressed L2 entry at ${hex(entry.at)} pointed past the end, at ${hex(target)}` };
  },
  "compressed-size": (path, l, rand) => {
    const entry = pick(rand, compressedEntries(l));
    if (!entry) return null;
    const offsetBits = 62n - BigInt(Math.log2(l.clusterSize) - 8);
    const sizeMask = ((1n << 62n) - 1n) & ~((1n << offsetBits) - 1n);
    const value = (entry.value & ~sizeMask) | (BigInt(Math.floor(rand() * 2 ** 20)) << offsetBits & sizeMask);
    patchU64(path, entry.at, value);
    return { what: `compressed L2 entry at ${hex(entry.at)}: sector count changed` };
  },
};

/** One case of the corpus. */
export interface Case {
  base: Base;
  kind: string;
  seed: number;
}

/**
 * The corpus: every kind on `basesPerKind` bases (rotating through all of them, so each cluster
 * size, refcount width and version meets every kind across the corpus), `seedsPerBase` seeds each.
 */
export function corpus(seed: number, basesPerKind: number, seedsPerBase: number): Case[] {
  const rand = seededRandom(seed);
  const cases: Case[] = [];
  let rotation = 0;
  for (const kind of Object.keys(KINDS)) {
    for (let b = 0; b < Math.min(basesPerKind, BASES.length); b++) {
      const base = BASES[(rotation + b) % BASES.length];
      for (let s = 0; s < seedsPerBase; s++) cases.push({ base, kind, seed: Math.floor(rand() * 2 ** 32) });
    }
    rotation += basesPerKind;
  }
  return cases;
}

/** Applies `c`'s damage to the copy of its base at `path`; null if the kind does not apply to that base. */
export function damage(path: string, c: Case): Damage | null {
  return KINDS[c.kind](path, layoutOf(path), seededRandom(c.seed));
}
