/**
 * The counting half of a qcow2 check: walks every piece of metadata, computes how many references
 * each host cluster has, loads the refcounts the image stores, and compares the two as
 * `qemu-img check` does (shared/reference/cow-disks.md sections 2.4, 2.5 and 4).
 *
 * Everything is bounded by the file, not by numbers read from it: the refcount arrays have one
 * element per cluster of the file (plus one, for compressed data that spills past the last
 * cluster), a reference past the end is an error rather than a reason to grow them, each L2 table
 * is read once however many L1 entries point at it (its references are counted with that
 * multiplicity, as QEMU's walk per L1 entry counts them), and the L1 tables read in total may not
 * exceed the file.
 */

import { type BlockFile, readExact } from "../block-file.ts";
import { ErrorCode, TandemError } from "../../errors.ts";
import { Findings, entryHex, hex } from "./check-findings.ts";
import { V3_MIN_SNAPSHOT_EXTRA_DATA, readSnapshotTable } from "./check-snapshots.ts";
import { MAX_L1_BYTES, type Qcow2Geometry, type Qcow2Header, geometry } from "./header.ts";
import {
  ENTRY_BYTES,
  L2Kind,
  compressedByteLength,
  compressedOffset,
  entryOffset,
  hasZeroFlag,
  isCompressed,
  isCopied,
  l1ReservedBitsSet,
  l2Kind,
  l2ReservedBitsSet,
} from "./l2-entry.ts";
import { readRefcountSaturating } from "./refcount-entry.ts";

/** One refcount per host cluster, in an element type wide enough for the image's refcount width. */
export type RefcountArray = Uint8Array | Uint16Array | Uint32Array | Float64Array;

/**
 * The most bytes one refcount array may take (a check keeps two, a repair three): 2^27 clusters
 * with 16-bit refcounts, 8 TiB of 64 KiB clusters.
 */
export const MAX_REFCOUNT_ARRAY_BYTES = 2 ** 28;

/** Refcount table entry bits 0-8 are reserved (qcow2.rst "Host cluster management"). */
const REFTABLE_RESERVED_LO = 0x1ff;
const TWO_32 = 0x1_0000_0000;
/** Bytes of a table read per call while streaming its entries. */
const TABLE_CHUNK_BYTES = 1 << 20;

/** What one check pass learned about an image. */
export interface Scan {
  geometry: Qcow2Geometry;
  fileSize: number;
  /** Length of the refcount arrays: the file's clusters plus one. */
  slots: number;
  /** References the metadata makes to each cluster (capped at the refcount width's maximum). */
  references: RefcountArray;
  /** The refcount the image stores for any host cluster (0 where no refcount block covers it). */
  storedRefcount(cluster: number): number;
  /** Clusters counted for the refcount table and blocks, one element per reference. */
  refcountStructure: number[];
  /**
   * References to clusters past the end of the file (counted as errors, not in `references`), by
   * cluster, for clusters a rebuild could reach: it must not put its structures there.
   */
  beyondEnd: Map<number, number>;
  /** Clusters with more references than the refcount width can count (their `references` is the maximum). */
  overflowed: Set<number>;
  /** The refcount table has entries that cannot be used as they are (a rebuild is needed). */
  structureDamaged: boolean;
  /** Some stored refcount differs from the references. */
  refcountsDiffer: boolean;
  /** The last cluster with a stored refcount or a reference. */
  highestCluster: number;
  findings: Findings;
}

/**
 * A zeroed refcount array of `length` elements wide enough for `refcountBits`-bit refcounts.
 * Fails with E_DISK_UNSUPPORTED past {@link MAX_REFCOUNT_ARRAY_BYTES} or if memory runs out.
 */
export function refcountArray(refcountBits: number, length: number, name: string): RefcountArray {
  const elementBytes = Math.max(1, refcountBits / 8);
  const refuse = (why: string) =>
    new TandemError(ErrorCode.DiskUnsupported, `${name}: checking a file of ${length} clusters with ${refcountBits}-bit refcounts is not supported (${why})`);
  if (length * elementBytes > MAX_REFCOUNT_ARRAY_BYTES) throw refuse(`over ${MAX_REFCOUNT_ARRAY_BYTES} bytes per refcount array`);
  try {
    if (elementBytes === 1) return new Uint8Array(length);
    if (elementBytes === 2) return new Uint16Array(length);
    if (elementBytes === 4) return new Uint32Array(length);
    return new Float64Array(length);
  } catch (error) {
    if (error instanceof RangeError) throw refuse("out of memory");
    throw error;
  }
}

/** How many of a table's `entries` 8-byte entries at `offset` lie wholly inside a file of `fileSize` bytes. */
export function entriesInFile(offset: number, entries: number, fileSize: number): number {
  return Math.max(0, Math.min(entries, Math.floor((fileSize - offset) / ENTRY_BYTES)));
}

/**
 * Calls `visit` with the halves of every non-zero 8-byte entry of the table of `entries` entries
 * at `offset` (which the caller has bounded by the file), reading it in chunks.
 */
export function forEachEntry(file: BlockFile, offset: number, entries: number, visit: (index: number, hi: number, lo: number) => void): void {
  const perChunk = TABLE_CHUNK_BYTES / ENTRY_BYTES;
  const buffer = new Uint8Array(Math.min(entries, perChunk) * ENTRY_BYTES);
  const view = new DataView(buffer.buffer);
  for (let start = 0; start < entries; start += perChunk) {
    const count = Math.min(perChunk, entries - start);
    const chunk = buffer.subarray(0, count * ENTRY_BYTES);
    readExact(file, offset + start * ENTRY_BYTES, chunk, "table");
    for (let i = 0; i < count; i++) {
      const hi = view.getUint32(i * ENTRY_BYTES);
      const lo = view.getUint32(i * ENTRY_BYTES + 4);
      if ((hi | lo) !== 0) visit(start + i, hi, lo);
    }
  }
}

/** A message fragment, or a function that builds it only when the message is kept. */
type Describe = string | (() => string);

function describe(what: Describe): string {
  return typeof what === "string" ? what : what();
}

/** The references counted so far, one element per host cluster of the file (plus one). */
class References {
  readonly counts: RefcountArray;
  /** References past the end of the file, by cluster, up to {@link beyondLimit}. */
  readonly beyondEnd = new Map<number, number>();
  /** Clusters whose count stopped at the maximum. */
  readonly overflowed = new Set<number>();
  readonly #beyondLimit: number;
  readonly #geometry: Qcow2Geometry;
  readonly #fileSize: number;
  readonly #findings: Findings;

  constructor(geo: Qcow2Geometry, fileSize: number, slots: number, findings: Findings, name: string) {
    this.counts = refcountArray(geo.refcountBits, slots, name);
    // A rebuild grows the file by its new refcount blocks and table, far less than doubling it.
    this.#beyondLimit = 2 * slots + 1024;
    this.#geometry = geo;
    this.#fileSize = fileSize;
    this.#findings = findings;
  }

  /**
   * Counts `times` references to each cluster the `bytes` bytes at `offset` touch. A range ending
   * a cluster or more past the end of the file is an error and counts nothing (false); less is
   * allowed, as QEMU allows it, because the last cluster may be partly written. A count past the
   * refcount width's maximum is an overflow error and stays at the maximum.
   */
  add(offset: number, bytes: number, times: number, what: Describe): boolean {
    if (bytes <= 0) return true;
    const cs = this.#geometry.clusterSize;
    const end = offset + bytes;
    if (end > this.#fileSize && end - this.#fileSize >= cs) {
      this.#findings.error(() => `ERROR ${describe(what)} at ${hex(offset)} (${bytes} bytes) lies past the end of the file`, times);
      const last = Math.min(Math.floor((end - 1) / cs), this.#beyondLimit);
      for (let c = Math.floor(offset / cs); c <= last; c++) this.beyondEnd.set(c, (this.beyondEnd.get(c) ?? 0) + times);
      return false;
    }
    const max = this.#geometry.maxRefcount;
    const counts = this.counts;
    const last = Math.floor((end - 1) / cs);
    for (let c = Math.floor(offset / cs); c <= last; c++) {
      const room = max - counts[c];
      if (times <= room) {
        counts[c] += times;
      } else {
        counts[c] = max;
        this.overflowed.add(c);
        this.#findings.error(() => `ERROR cluster ${c} (${describe(what)}) is referenced more than ${max} times: refcount overflow`, times - room);
      }
    }
    return true;
  }
}

/** Walks `header`'s image in `file` and compares references with stored refcounts. */
export function scanImage(file: BlockFile, header: Qcow2Header): Scan {
  const geo = geometry(header);
  const cs = geo.clusterSize;
  const fileSize = file.size();
  const slots = Math.ceil(fileSize / cs) + 1;
  const findings = new Findings();
  const references = new References(geo, fileSize, slots, findings, file.path);

  references.add(0, cs, 1, "header");
  const l2Tables = countL1Tables(file, header, references, findings);
  countL2Tables(file, header, l2Tables, references, findings);
  const structure = countRefcountStructure(file, header, references, findings);
  const stored = readStoredRefcounts(file, geo, slots, structure.blockOffsets);

  // The spare last slot only takes part if something references it, as QEMU grows its array only then.
  const counts = references.counts;
  const limit = counts[slots - 1] > 0 ? slots : slots - 1;
  let highestCluster = 0;
  let refcountsDiffer = false;
  for (let c = 0; c < limit; c++) {
    const refcount = stored.refcounts[c];
    const refs = counts[c];
    if (refcount > 0 || refs > 0) highestCluster = c;
    if (refcount === refs) continue;
    refcountsDiffer = true;
    if (refcount < refs) findings.error(() => `ERROR cluster ${c} refcount=${refcount} reference=${refs}`);
    else findings.leak(() => `Leaked cluster ${c} refcount=${refcount} reference=${refs}`);
  }

  return {
    geometry: geo,
    fileSize,
    slots,
    references: counts,
    storedRefcount: stored.refcountOf,
    refcountStructure: structure.clusters,
    beyondEnd: references.beyondEnd,
    overflowed: references.overflowed,
    structureDamaged: structure.damaged,
    refcountsDiffer,
    highestCluster,
    findings,
  };
}

/**
 * Counts the active L1 table, the snapshot table and each snapshot's L1 table, then the L2 tables
 * they reach. Returns the L2 tables inside the file (by cluster) with how many L1 entries reach
 * each. A snapshot L1 table shared by several snapshots is read once.
 */
function countL1Tables(file: BlockFile, header: Qcow2Header, references: References, findings: Findings): Map<number, number> {
  const cs = 2 ** header.clusterBits;
  const fileSize = file.size();
  const l2References = new Map<number, { times: number; where: string }>();
  let l1BytesLeft = fileSize;
  const walkL1 = (offset: number, entries: number, times: number, label: string): void => {
    references.add(offset, entries * ENTRY_BYTES, times, `${label} L1 table`);
    const readable = entriesInFile(offset, entries, fileSize);
    l1BytesLeft -= readable * ENTRY_BYTES;
    if (l1BytesLeft < 0) {
      throw new TandemError(ErrorCode.DiskFormat, `${file.path}: the snapshots' L1 tables overlap (together they are larger than the file); the snapshot table is corrupt`);
    }
    forEachEntry(file, offset, readable, (index, hi, lo) => {
      const reserved = l1ReservedBitsSet(hi, lo);
      if (reserved) findings.error(() => `ERROR ${label} L1 entry ${index} has reserved bits set: ${entryHex(hi, lo)}`, times);
      const l2 = entryOffset(hi, lo);
      if (l2 === 0) {
        if (!reserved) findings.error(() => `ERROR ${label} L1 entry ${index} has flags but no L2 table offset: ${entryHex(hi, lo)}`, times);
        return;
      }
      // As QEMU: the entry is corrupt, but what it names is still counted and walked, so a repair
      // frees nothing the table (read from the unaligned offset) still references.
      if (l2 % cs !== 0) findings.error(() => `ERROR ${label} L1 entry ${index}: L2 table offset ${hex(l2)} is not cluster aligned; L1 entry corrupted`, times);
      const seen = l2References.get(l2);
      if (seen) seen.times += times;
      else l2References.set(l2, { times, where: `${label} L1 entry ${index}` });
    });
  };
  if (header.l1Size > 0) walkL1(header.l1TableOffset, header.l1Size, 1, "active");

  const snapshots = readSnapshotTable(file, header);
  const sharedL1s = new Map<string, { offset: number; entries: number; times: number; label: string }>();
  snapshots.entries.forEach((snapshot, index) => {
    const label = `snapshot ${snapshot.id}`;
    if (header.version === 3 && snapshot.extraDataSize < V3_MIN_SNAPSHOT_EXTRA_DATA) {
      findings.error(`ERROR snapshot table entry ${index} is incomplete: ${snapshot.extraDataSize} bytes of extra data (version 3 needs ${V3_MIN_SNAPSHOT_EXTRA_DATA})`);
    }
    if (snapshot.l1Offset % cs !== 0) {
      findings.error(`ERROR ${label}: L1 table offset ${hex(snapshot.l1Offset)} is not cluster aligned`);
      return;
    }
    if (snapshot.l1Size * ENTRY_BYTES > MAX_L1_BYTES) {
      findings.error(`ERROR ${label}: L1 table of ${snapshot.l1Size} entries is over QEMU's ${MAX_L1_BYTES}-byte limit`);
      return;
    }
    if (snapshot.l1Size === 0) return;
    const key = `${snapshot.l1Offset}:${snapshot.l1Size}`;
    const shared = sharedL1s.get(key);
    if (shared) shared.times++;
    else sharedL1s.set(key, { offset: snapshot.l1Offset, entries: snapshot.l1Size, times: 1, label });
  });
  for (const table of sharedL1s.values()) walkL1(table.offset, table.entries, table.times, table.label);
  references.add(header.snapshotsOffset, snapshots.bytes, 1, "snapshot table");

  const l2Tables = new Map<number, number>();
  for (const [l2, { times, where }] of l2References) {
    if (references.add(l2, cs, times, `L2 table (first reached from ${where})`)) l2Tables.set(l2, times);
  }
  return l2Tables;
}

/** Reads each L2 table once and counts the clusters its entries reference, `times` over. */
function countL2Tables(file: BlockFile, header: Qcow2Header, tables: Map<number, number>, references: References, findings: Findings): void {
  const cs = 2 ** header.clusterBits;
  const table = new Uint8Array(cs);
  const view = new DataView(table.buffer);
  for (const offset of [...tables.keys()].sort((a, b) => a - b)) {
    const times = tables.get(offset) ?? 0;
    table.fill(0);
    file.read(offset, table); // a last cluster cut short by the end of the file reads as zeros
    for (let i = 0; i < cs / ENTRY_BYTES; i++) {
      const hi = view.getUint32(i * ENTRY_BYTES);
      const lo = view.getUint32(i * ENTRY_BYTES + 4);
      if ((hi | lo) === 0) continue;
      if (isCompressed(hi)) {
        if (isCopied(hi)) findings.error(() => `ERROR OFLAG_COPIED compressed cluster: l2_entry=${entryHex(hi, lo)} (compressed clusters never have it)`, times);
        references.add(compressedOffset(hi, lo, header.clusterBits), compressedByteLength(hi, lo, header.clusterBits), times, "compressed data");
        continue;
      }
      if (l2ReservedBitsSet(hi, lo)) findings.error(() => `ERROR L2 entry with reserved bits set: ${entryHex(hi, lo)}`, times);
      if (header.version === 2 && hasZeroFlag(lo)) findings.error(() => `ERROR L2 entry with the zero flag in a version 2 image: ${entryHex(hi, lo)}`, times);
      const kind = l2Kind(hi, lo);
      if (kind !== L2Kind.Normal && kind !== L2Kind.ZeroAllocated) continue;
      const dataOffset = entryOffset(hi, lo);
      if (dataOffset % cs !== 0) findings.error(() => `ERROR data cluster offset ${hex(dataOffset)} is not cluster aligned (l2_entry=${entryHex(hi, lo)})`, times);
      // Counted even when unaligned, as QEMU does: both clusters it touches stay reserved.
      references.add(dataOffset, cs, times, () => `data cluster (L2 table ${hex(offset)} entry ${i})`);
    }
  }
}

/** The refcount table and blocks as counted. */
interface RefcountStructure {
  /** Usable refcount block offsets by table index; 0 where there is none or the entry is damaged. */
  blockOffsets: Float64Array;
  /** The clusters of the table and of each usable block, one element per reference. */
  clusters: number[];
  /** Some entry is unusable or a block is referenced by something else too. */
  damaged: boolean;
}

/**
 * Counts the refcount table and every refcount block it names. A table cut off by the end of the
 * file (a truncated image) reads as zeros past it: the structure is then damaged, and a repair
 * rebuilds it.
 */
function countRefcountStructure(file: BlockFile, header: Qcow2Header, references: References, findings: Findings): RefcountStructure {
  const cs = 2 ** header.clusterBits;
  const tableBytes = header.refcountTableClusters * cs;
  const table = new Uint8Array(tableBytes);
  const present = file.read(header.refcountTableOffset, table);
  // Not counted as an error of its own: the reference to the table past the end already is one (as in QEMU).
  if (present < tableBytes) findings.note(`ERROR the refcount table (${tableBytes} bytes at ${hex(header.refcountTableOffset)}) is cut off by the end of the file after ${present} bytes`);
  const view = new DataView(table.buffer);
  references.add(header.refcountTableOffset, tableBytes, 1, "refcount table");
  const first = header.refcountTableOffset / cs;
  const clusters = Array.from({ length: header.refcountTableClusters }, (_, k) => first + k);
  const fileClusters = Math.ceil(file.size() / cs);
  const blockOffsets = new Float64Array(tableBytes / ENTRY_BYTES);
  let damaged = present < tableBytes;
  for (let i = 0; i < blockOffsets.length; i++) {
    const hi = view.getUint32(i * ENTRY_BYTES);
    const lo = view.getUint32(i * ENTRY_BYTES + 4);
    if ((hi | lo) === 0) continue;
    if ((lo & REFTABLE_RESERVED_LO) !== 0) {
      findings.error(() => `ERROR refcount table entry ${i} has reserved bits set: ${entryHex(hi, lo)}`);
      damaged = true;
      continue;
    }
    const offset = hi * TWO_32 + (lo >>> 0);
    if (offset % cs !== 0) {
      findings.error(() => `ERROR refcount block ${i} at ${hex(offset)} is not cluster aligned`);
      damaged = true;
      continue;
    }
    if (offset / cs >= fileClusters) {
      findings.error(() => `ERROR refcount block ${i} at ${hex(offset)} lies past the end of the file`);
      damaged = true;
      continue;
    }
    references.add(offset, cs, 1, `refcount block ${i}`);
    clusters.push(offset / cs);
    blockOffsets[i] = offset;
    const refs = references.counts[offset / cs];
    if (refs !== 1) {
      findings.error(() => `ERROR refcount block ${i} at ${hex(offset)} has ${refs} references (it must have exactly one)`);
      damaged = true;
    }
  }
  return { blockOffsets, clusters, damaged };
}

/**
 * The refcounts the image stores: an array for the file's clusters, and a lookup for any cluster
 * (metadata may point past the end). Blocks cut short by the end of the file read as zeros, as
 * QEMU reads them.
 */
function readStoredRefcounts(file: BlockFile, geo: Qcow2Geometry, slots: number, blockOffsets: Float64Array): { refcounts: RefcountArray; refcountOf(cluster: number): number } {
  const perBlock = geo.refcountBlockEntries;
  const refcounts = refcountArray(geo.refcountBits, slots, file.path);
  const block = new Uint8Array(geo.clusterSize);
  const covering = Math.min(blockOffsets.length, Math.ceil(slots / perBlock));
  for (let index = 0; index < covering; index++) {
    if (blockOffsets[index] === 0) continue;
    block.fill(0);
    file.read(blockOffsets[index], block);
    const base = index * perBlock;
    const n = Math.min(perBlock, slots - base);
    for (let k = 0; k < n; k++) refcounts[base + k] = readRefcountSaturating(block, k, geo.refcountBits);
  }
  let cachedIndex = -1;
  const refcountOf = (cluster: number): number => {
    if (cluster < slots) return refcounts[cluster];
    const index = Math.floor(cluster / perBlock);
    if (index >= blockOffsets.length || blockOffsets[index] === 0) return 0;
    if (cachedIndex !== index) {
      block.fill(0);
      file.read(blockOffsets[index], block);
      cachedIndex = index;
    }
    return readRefcountSaturating(block, cluster % perBlock, geo.refcountBits);
  };
  return { refcounts, refcountOf };
}
