/**
 * A qcow2 image as a disk: reads versions 2 and 3 (backing files, zero and compressed clusters),
 * writes in place where it can and allocates otherwise. Layout: QEMU's docs/interop/qcow2.rst
 * (cow-disks.md section 2).
 *
 * Metadata is written back, in QEMU's crash-safe order (cow-disks.md section 3.1), on flush,
 * close, or when a dirty L2 table leaves the cache:
 *   1. guest data and copy-on-write data, synced;
 *   2. refcount blocks (synced), then refcount table entries of new blocks (synced);
 *   3. L2 tables, synced; 4. L1 entries, synced;
 *   5. only then the refcounts of clusters whose last reference step 3 removed.
 * So at every moment the file's refcounts are at least the references it holds: a crash leaks
 * clusters at worst. With lazy refcounts the dirty bit is set (durably) first and step 2 waits
 * for close; a crash then needs a repair, which opening for writing runs.
 */

import { ErrorCode, TandemError } from "../../errors.ts";
import { DiskBase, mergeExtents, type Disk, type DiskExtent, type DiskInfo } from "../disk.ts";
import { CompressedClusterReader } from "./compressed.ts";
import { Compatible, H_AUTOCLEAR_FEATURES, H_INCOMPATIBLE_FEATURES, H_REFCOUNT_TABLE_OFFSET, Incompatible, geometry, type Qcow2Header } from "./header.ts";
import type { ImageFile } from "./image-file.ts";
import {
  COMPRESSED_BIT,
  COPIED_BIT,
  ENTRY_BYTES,
  L2Kind,
  ZERO_BIT,
  plainDataOffset,
  readU32,
  compressedByteLength,
  compressedOffset,
  entryOffset,
  l1ReservedBitsSet,
  l2ReservedBitsSet,
  writeEntry,
} from "./l2-entry.ts";
import { indexMetadata } from "./index-metadata.ts";
import { Metadata, type MetadataIndex, type MetadataKinds, metadataName } from "./metadata-index.ts";
import { looksMetadataPreallocated } from "./preallocation.ts";
import { Refcounts } from "./refcounts.ts";
import { TableCache, type CachedTable } from "./table-cache.ts";
import { ZeroFinder, splitByZeros } from "../zero-ranges.ts";

/** The default L2 cache never exceeds QEMU's Linux default (cow-disks.md section 6). */
export const MAX_DEFAULT_L2_CACHE_BYTES = 32 << 20;
/** Refcount blocks kept in memory: allocation walks them mostly in order, so a few MiB is plenty. */
const REFCOUNT_CACHE_BYTES = 4 << 20;

/** Everything {@link Qcow2Disk} is built from; qcow2-format.ts reads and validates it. */
export interface Qcow2DiskParts {
  file: ImageFile;
  header: Qcow2Header;
  /** The L1 table's bytes. */
  l1: Uint8Array;
  /** The refcount table's bytes (only needed when writable). */
  refcountTable: Uint8Array | null;
  backing: Disk | null;
  /** The header names a backing file that was deliberately not opened (noBacking). */
  backingMissing: boolean;
  readOnly: boolean;
  sync: boolean;
  /** Check every write against the metadata index (false only to measure the check's cost). */
  overlapChecks: boolean;
  l2CacheBytes?: number;
}

/** A qcow2 image. */
export class Qcow2Disk extends DiskBase {
  readonly format = "qcow2";
  readonly size: number;
  readonly readOnly: boolean;
  readonly backing: Disk | null;
  readonly #file: ImageFile;
  readonly #header: Qcow2Header;
  readonly #clusterBits: number;
  readonly #clusterSize: number;
  readonly #l2Entries: number;
  readonly #l1: Uint8Array;
  readonly #l1View: DataView;
  /** L1 entries changed in memory and not yet written: the index range [from, to). */
  #l1DirtyFrom = Infinity;
  #l1DirtyTo = 0;
  readonly #l2: TableCache;
  readonly #refcounts: Refcounts | null;
  /** Where the image's metadata lies: every write of this disk is checked against it. */
  readonly #metadata: MetadataIndex;
  readonly #compressed: CompressedClusterReader;
  readonly #sync: boolean;
  readonly #lazyRefcounts: boolean;
  readonly #backingMissing: boolean;
  /** Clusters whose last reference is gone in memory; their refcounts drop once that is durable. */
  #pendingFrees: number[] = [];
  /** The header's dirty bit as the file has it. */
  #dirtyOnDisk: boolean;
  /** A zero cluster, for partial zeroing. */
  readonly #zeros: Uint8Array;
  /** Pending L2 updates of one write, as (entry index, host offset) pairs: reused, not reallocated. */
  readonly #updates: Float64Array;
  /** A cluster buffer for copy-on-write. */
  readonly #cowBuffer: Uint8Array;
  /** The L2 table of L1 entry #recentL1Index, valid while the cache's eviction count is #recentEvictions. */
  #recentL1Index = -1;
  #recentTable: CachedTable | null = null;
  #recentEvictions = 0;
  // The L2 entry the last lookup found, as two u32 halves: set by #lookup, read right after it.
  #hi = 0;
  #lo = 0;
  /** The last lookup found no L2 table: every cluster up to the end of its L1 entry's range is unallocated. */
  #noL2Table = false;
  /** Whether the image looks metadata-preallocated (decided at the first map, as QEMU decides it). */
  #preallocated: boolean | undefined;

  constructor(parts: Qcow2DiskParts) {
    super();
    const { header } = parts;
    this.#file = parts.file;
    this.#header = header;
    this.size = header.size;
    this.backing = parts.backing;
    this.#backingMissing = parts.backingMissing;
    this.#clusterBits = header.clusterBits;
    this.#clusterSize = 2 ** header.clusterBits;
    this.#l2Entries = this.#clusterSize / ENTRY_BYTES;
    this.#l1 = parts.l1;
    this.#l1View = new DataView(parts.l1.buffer, parts.l1.byteOffset, parts.l1.byteLength);
    this.#dirtyOnDisk = (header.incompatibleFeatures & Incompatible.Dirty) !== 0n;
    const corrupt = (header.incompatibleFeatures & Incompatible.Corrupt) !== 0n;
    this.readOnly = parts.readOnly || corrupt;
    this.#sync = parts.sync;
    this.#lazyRefcounts = header.version === 3 && (header.compatibleFeatures & Compatible.LazyRefcounts) !== 0n;
    // Write buffers (up to 8 MiB with 2 MiB clusters) only for disks that can write.
    const scratch = this.readOnly ? 0 : this.#clusterSize;
    this.#zeros = new Uint8Array(scratch);
    this.#cowBuffer = new Uint8Array(scratch);
    this.#updates = new Float64Array((scratch / ENTRY_BYTES) * 2);
    this.#compressed = new CompressedClusterReader(parts.file, header.clusterBits);

    const allTables = Math.max(1, header.l1Size) * this.#clusterSize;
    const cacheBytes = parts.l2CacheBytes ?? Math.min(allTables, MAX_DEFAULT_L2_CACHE_BYTES);
    this.#l2 = new TableCache(parts.file, {
      tableBytes: this.#clusterSize,
      capacity: Math.max(2, Math.floor(cacheBytes / this.#clusterSize)),
      what: "L2 table",
      kind: Metadata.ActiveL2,
      // An L2 table may only reach the file after what it depends on: write everything back in order.
      makeClean: () => this.#writeBack(),
    });
    this.#metadata = indexMetadata(parts.file.file, header, parts.l1, this.readOnly ? null : parts.refcountTable);
    if (!this.readOnly) {
      this.#metadata.onOverlap((kinds, offset, bytes) => this.#refuseOverlap(kinds, offset, bytes));
      if (parts.overlapChecks) parts.file.protect(this.#metadata);
    }
    this.#refcounts =
      this.readOnly || parts.refcountTable === null
        ? null
        : new Refcounts(parts.file, parts.refcountTable, {
            geometry: geometry(header),
            tableOffset: header.refcountTableOffset,
            tableClusters: header.refcountTableClusters,
            cacheBlocks: Math.floor(REFCOUNT_CACHE_BYTES / this.#clusterSize),
            metadata: this.#metadata,
            beforeMetadataWrite: () => this.#beforeMetadataWrite(),
            moveTable: (offset, clusters) => this.#moveRefcountTable(offset, clusters),
          });
  }

  /** Refuses writes with a message saying why, where the generic read-only check would not. */
  override write(offset: number, data: Uint8Array): void {
    this.#refuseIfCorrupt();
    super.write(offset, data);
  }
  override writeZeroes(offset: number, length: number): void {
    this.#refuseIfCorrupt();
    super.writeZeroes(offset, length);
  }
  override discard(offset: number, length: number): void {
    this.#refuseIfCorrupt();
    super.discard(offset, length);
  }

  protected doRead(offset: number, target: Uint8Array): void {
    const cs = this.#clusterSize;
    const end = target.length;
    // The common case, a read inside one data cluster of the last L2 table used, goes straight to the file.
    const first = Math.floor(offset / cs);
    const within = offset - first * cs;
    const l1Index = Math.floor(first / this.#l2Entries);
    if (within + end <= cs && l1Index === this.#recentL1Index && this.#l2.evictions === this.#recentEvictions) {
      const bytes = (this.#recentTable as CachedTable).bytes;
      const at = (first - l1Index * this.#l2Entries) * ENTRY_BYTES;
      const lo = readU32(bytes, at + 4);
      const host = plainDataOffset(readU32(bytes, at), lo);
      // Aligned (the offset's low bits are all in `lo`) and inside the file as written so far; anything else takes the full path.
      if (host > 0 && (lo & (cs - 1)) === 0 && host < this.#file.length) {
        const n = this.#file.file.read(host + within, target);
        if (n < end) target.fill(0, n);
        return;
      }
    }
    // A run of clusters read with one call: RUN_HOST (contiguous in the file), RUN_BACKING or RUN_ZERO.
    let runKind = RUN_NONE;
    let runPos = 0;
    let runHost = 0;
    let runLen = 0;
    let pos = 0;
    while (pos < end) {
      const guest = offset + pos;
      const cluster = Math.floor(guest / cs);
      const inCluster = guest - cluster * cs;
      const n = Math.min(cs - inCluster, end - pos);
      const kind = this.#lookup(cluster);
      let next = RUN_ZERO;
      let host = 0;
      if (kind === L2Kind.Normal) {
        next = RUN_HOST;
        host = entryOffset(this.#hi, this.#lo) + inCluster;
      } else if (kind === L2Kind.Unallocated) {
        next = RUN_BACKING;
      } else if (kind === L2Kind.Compressed) {
        next = RUN_NONE;
      }
      if (runLen > 0 && (next !== runKind || (next === RUN_HOST && runHost + runLen !== host))) {
        this.#readRun(runKind, offset + runPos, runHost, target.subarray(runPos, runPos + runLen));
        runLen = 0;
      }
      if (next === RUN_NONE) {
        target.set(this.#compressed.read(this.#hi, this.#lo).subarray(inCluster, inCluster + n), pos);
      } else if (runLen === 0) {
        runKind = next;
        runPos = pos;
        runHost = host;
        runLen = n;
      } else {
        runLen += n;
      }
      pos += n;
    }
    if (runLen > 0) this.#readRun(runKind, offset + runPos, runHost, target.subarray(runPos, runPos + runLen));
  }

  protected doWrite(offset: number, data: Uint8Array): void {
    this.#refuseIfShared();
    this.#writeData(offset, data);
    if (this.#sync) this.#writeBack();
  }

  protected doWriteZeroes(offset: number, length: number): void {
    this.#refuseIfShared();
    this.#zeroRange(offset, length, false);
    if (this.#sync) this.#writeBack();
  }

  protected doDiscard(offset: number, length: number): void {
    this.#refuseIfShared();
    this.#zeroRange(offset, length, true);
    if (this.#sync) this.#writeBack();
  }

  protected doFlush(): void {
    this.#writeBack();
  }

  protected doMap(offset: number, length: number): DiskExtent[] {
    const cs = this.#clusterSize;
    const extents: DiskExtent[] = [];
    // Data clusters whose host bytes are holes read as zeros: QEMU maps them zero (and data), in
    // images that look metadata-preallocated (preallocation.ts).
    this.#preallocated ??= looksMetadataPreallocated(this.#file.file, this.#header);
    const zeros = this.#preallocated ? new ZeroFinder(this.#file.file) : null;
    let unallocatedFrom = -1;
    const end = offset + length;
    for (let pos = offset; pos < end; ) {
      const cluster = Math.floor(pos / cs);
      const inCluster = pos - cluster * cs;
      let n = Math.min(cs - inCluster, end - pos);
      const kind = this.#lookup(cluster);
      if (kind === L2Kind.Unallocated) {
        if (unallocatedFrom < 0) unallocatedFrom = pos;
        // Without an L2 table, skip its whole range at once (a huge empty disk maps in one step).
        if (this.#noL2Table) n = Math.min(end, this.#l2RangeEnd(cluster)) - pos;
      } else {
        if (unallocatedFrom >= 0) this.#mapUnallocated(unallocatedFrom, pos - unallocatedFrom, extents);
        unallocatedFrom = -1;
        const host = entryOffset(this.#hi, this.#lo) + inCluster;
        const extent: DiskExtent = { offset: pos, length: n, present: true, zero: false, data: true, depth: 0 };
        if (kind === L2Kind.Normal) {
          extent.fileOffset = host;
          if (zeros !== null) {
            splitByZeros(extent, zeros, true, extents);
            pos += n;
            continue;
          }
        } else if (kind === L2Kind.ZeroPlain || kind === L2Kind.ZeroAllocated) {
          extent.zero = true;
          extent.data = false;
          if (kind === L2Kind.ZeroAllocated) extent.fileOffset = host;
        }
        extents.push(extent);
      }
      pos += n;
    }
    if (unallocatedFrom >= 0) this.#mapUnallocated(unallocatedFrom, end - unallocatedFrom, extents);
    return mergeExtents(extents);
  }

  protected doClose(): void {
    try {
      if (!this.readOnly) {
        this.#writeBack();
        if (this.#refcounts !== null && this.#refcounts.dirty) this.#refcounts.writeBack();
        if (this.#dirtyOnDisk) this.#setDirtyBit(false);
      }
    } finally {
      try {
        this.backing?.close();
      } finally {
        this.#file.file.close();
      }
    }
  }

  info(): DiskInfo {
    const h = this.#header;
    const info: DiskInfo = {
      format: this.format,
      fileName: this.#file.path,
      virtualSize: this.size,
      fileSize: this.#file.file.size(),
      clusterSize: this.#clusterSize,
      dirty: this.#dirtyOnDisk,
      formatSpecific: {
        version: h.version,
        compat: h.version === 2 ? "0.10" : "1.1",
        refcountBits: 2 ** h.refcountOrder,
        lazyRefcounts: this.#lazyRefcounts,
        corrupt: (h.incompatibleFeatures & Incompatible.Corrupt) !== 0n,
        snapshots: h.nbSnapshots,
      },
    };
    if (h.backingFile !== undefined) info.backingFile = h.backingFile;
    if (h.backingFormat !== undefined) info.backingFormat = h.backingFormat;
    return info;
  }

  // ---- lookup ----

  /**
   * The kind of guest cluster `cluster`, its L2 entry left in #hi/#lo. Every offset is validated
   * here before anyone uses it.
   */
  #lookup(cluster: number): L2Kind {
    const l1Index = Math.floor(cluster / this.#l2Entries);
    const table = this.#l2TableAt(l1Index);
    if (table === null) {
      this.#hi = 0;
      this.#lo = 0;
      this.#noL2Table = true;
      return L2Kind.Unallocated;
    }
    this.#noL2Table = false;
    const at = (cluster - l1Index * this.#l2Entries) * ENTRY_BYTES;
    return this.#classify(readU32(table.bytes, at), readU32(table.bytes, at + 4), cluster);
  }

  /** Validates the L2 entry (`hi`, `lo`) of guest cluster `cluster`, stores it in #hi/#lo and returns its kind. */
  #classify(hi: number, lo: number, cluster: number): L2Kind {
    this.#hi = hi;
    this.#lo = lo;
    if ((hi & COMPRESSED_BIT) !== 0) {
      this.#compressed.check(hi, lo);
      return L2Kind.Compressed;
    }
    const offset = entryOffset(hi, lo);
    if ((lo & ZERO_BIT) !== 0 && this.#header.version === 2) {
      throw this.#corrupt(`guest cluster ${cluster} has the ZERO flag, which version 2 images do not have`);
    }
    if (l2ReservedBitsSet(hi, lo)) throw this.#corrupt(`L2 entry of guest cluster ${cluster} has reserved bits set`);
    if (offset === 0) return (lo & ZERO_BIT) !== 0 ? L2Kind.ZeroPlain : L2Kind.Unallocated;
    if (offset % this.#clusterSize !== 0) throw this.#corrupt(`guest cluster ${cluster} maps to unaligned offset ${offset}`);
    if (offset >= this.#fileLimit()) throw this.#corrupt(`guest cluster ${cluster} maps to offset ${offset}, past the end of the file`);
    return (lo & ZERO_BIT) !== 0 ? L2Kind.ZeroAllocated : L2Kind.Normal;
  }

  /** The L2 table that L1 entry `l1Index` points to, or null if none. */
  #l2TableAt(l1Index: number): CachedTable | null {
    const at = l1Index * ENTRY_BYTES;
    const hi = readU32(this.#l1, at);
    const lo = readU32(this.#l1, at + 4);
    const offset = entryOffset(hi, lo);
    if (offset === 0) {
      if (l1ReservedBitsSet(hi, lo)) throw this.#corrupt(`L1 entry ${l1Index} has reserved bits set`);
      return null;
    }
    if (l1ReservedBitsSet(hi, lo) || offset % this.#clusterSize !== 0) throw this.#corrupt(`L1 entry ${l1Index} points to unaligned offset ${offset}`);
    if (offset + this.#clusterSize > this.#fileLimit()) throw this.#corrupt(`L1 entry ${l1Index} points to an L2 table at ${offset}, past the end of the file`);
    const overlap = this.#metadata.overlap(offset, this.#clusterSize, Metadata.ActiveL2);
    if (overlap !== 0) throw this.#corrupt(`L1 entry ${l1Index} points to an L2 table at ${offset}, inside the ${metadataName(overlap)}`);
    const table = this.#l2.get(offset);
    this.#recentL1Index = l1Index;
    this.#recentTable = table;
    this.#recentEvictions = this.#l2.evictions;
    return table;
  }

  /** Offsets at or past this lie outside the image file (counting clusters allocated but not yet written). */
  #fileLimit(): number {
    const allocated = this.#refcounts === null ? 0 : this.#refcounts.highWater * this.#clusterSize;
    return Math.max(this.#file.length, allocated);
  }

  #readRun(kind: number, guest: number, host: number, target: Uint8Array): void {
    if (kind === RUN_HOST) {
      const n = this.#file.read(host, target);
      if (n < target.length) target.fill(0, n);
    } else if (kind === RUN_BACKING) {
      this.#readBacking(guest, target);
    } else {
      target.fill(0);
    }
  }

  /** Reads what the backing file has at `guest`: zeros past its end, or without one. */
  #readBacking(guest: number, target: Uint8Array): void {
    const backing = this.backing;
    if (backing === null) {
      if (this.#backingMissing) {
        throw new TandemError(ErrorCode.DiskBacking, `${this.#file.path} was opened without its backing file ${this.#header.backingFile}; its unallocated clusters cannot be read`);
      }
      target.fill(0);
      return;
    }
    const available = Math.max(0, Math.min(target.length, backing.size - guest));
    if (available > 0) backing.readInto(guest, target.subarray(0, available));
    if (available < target.length) target.fill(0, available);
  }

  /** Map extents for unallocated clusters: the backing file's (one level deeper), zeros past its end. */
  #mapUnallocated(offset: number, length: number, out: DiskExtent[]): void {
    const backing = this.backing;
    const inBacking = backing === null ? 0 : Math.max(0, Math.min(length, backing.size - offset));
    if (backing !== null && inBacking > 0) {
      for (const extent of backing.map(offset, inBacking)) out.push({ ...extent, depth: extent.depth + 1 });
    }
    if (inBacking < length) {
      out.push({ offset: offset + inBacking, length: length - inBacking, present: false, zero: !this.#backingMissing, data: false, depth: 0 });
    }
  }

  /** True if guest cluster `cluster` of kind `kind` reads as zeros without reading data. */
  #readsAsZero(kind: L2Kind, cluster: number): boolean {
    if (kind === L2Kind.ZeroPlain || kind === L2Kind.ZeroAllocated) return true;
    if (kind !== L2Kind.Unallocated) return false;
    if (this.backing === null) return !this.#backingMissing;
    return cluster * this.#clusterSize >= this.backing.size;
  }

  // ---- writing ----

  #writeData(offset: number, data: Uint8Array): void {
    for (let pos = 0; pos < data.length; ) pos += this.#writeInTable(offset + pos, data, pos);
  }

  /**
   * Writes from `data[pos]` at guest offset `guest` up to the end of the data or of the L2 table
   * that maps `guest`; returns the bytes written. Data (and copy-on-write data) reaches the file
   * before the L2 entries change in memory, so a failed write leaves the table as it was.
   */
  #writeInTable(guest: number, data: Uint8Array, pos: number): number {
    const cs = this.#clusterSize;
    const refcounts = this.#writableRefcounts();
    const firstCluster = Math.floor(guest / cs);
    const l1Index = Math.floor(firstCluster / this.#l2Entries);
    const table = this.#l2TableForWrite(l1Index);
    const tableEnd = (l1Index + 1) * this.#l2Entries * cs;
    const stop = Math.min(data.length, pos + (tableEnd - guest));
    const updates = this.#updates;
    let updateCount = 0;
    // One file write for data that is contiguous both in `data` and in the file.
    let batchHost = 0;
    let batchPos = 0;
    let batchLen = 0;
    let previous = -1;
    // Host clusters whose reference this write replaces: freed once the new entries are durable.
    let released: number[] | null = null;
    for (let p = pos; p < stop; ) {
      const at = guest + (p - pos);
      const cluster = Math.floor(at / cs);
      const inCluster = at - cluster * cs;
      const n = Math.min(cs - inCluster, stop - p);
      const index = cluster - l1Index * this.#l2Entries;
      const kind = this.#classify(readU32(table.bytes, index * ENTRY_BYTES), readU32(table.bytes, index * ENTRY_BYTES + 4), cluster);
      const hi = this.#hi;
      const lo = this.#lo;
      let host = entryOffset(hi, lo);
      let inPlace = kind === L2Kind.Normal && (hi & COPIED_BIT) !== 0;
      if (kind === L2Kind.Normal && !inPlace && refcounts.get(host / cs) === 1) {
        // Only the COPIED flag is missing: the cluster is ours alone, so write in place and set it.
        inPlace = true;
        updates[updateCount * 2] = index;
        updates[updateCount * 2 + 1] = host;
        updateCount++;
      }
      let fresh = false;
      // In-place writes are checked against the metadata where they reach the file (ImageFile.write).
      if (!inPlace) {
        // A preallocated zero cluster of ours is reused (it holds stale bytes, so not fresh).
        if (kind !== L2Kind.ZeroAllocated || (hi & COPIED_BIT) === 0) {
          const taken = refcounts.allocate(previous >= 0 ? previous + 1 : -1);
          fresh = refcounts.lastAllocationFresh;
          previous = taken;
          released = this.#hostClusters(kind, hi, lo, released);
          host = taken * cs;
        }
        updates[updateCount * 2] = index;
        updates[updateCount * 2 + 1] = host;
        updateCount++;
      }
      const wholeOrFreshZero = n === cs || (inPlace ? true : fresh && this.#readsAsZero(kind, cluster));
      if (wholeOrFreshZero) {
        const target = host + inCluster;
        if (batchLen > 0 && batchHost + batchLen === target && batchPos + batchLen === p) {
          batchLen += n;
        } else {
          if (batchLen > 0) this.#file.write(batchHost, data.subarray(batchPos, batchPos + batchLen));
          batchHost = target;
          batchPos = p;
          batchLen = n;
        }
      } else {
        // Copy-on-write: the cluster's current bytes (backing, zeros, compressed or shared data) around the new ones.
        if (batchLen > 0) this.#file.write(batchHost, data.subarray(batchPos, batchPos + batchLen));
        batchLen = 0;
        const buffer = this.#cowBuffer;
        const start = cluster * cs;
        const valid = Math.min(cs, this.size - start);
        if (this.#readsAsZero(kind, cluster)) buffer.fill(0);
        else {
          this.doRead(start, buffer.subarray(0, valid));
          buffer.fill(0, valid);
        }
        buffer.set(data.subarray(p, p + n), inCluster);
        this.#file.write(host, buffer);
      }
      p += n;
    }
    if (batchLen > 0) this.#file.write(batchHost, data.subarray(batchPos, batchPos + batchLen));
    for (let i = 0; i < updateCount; i++) writeEntry(table.view, updates[i * 2] * ENTRY_BYTES, updates[i * 2 + 1], true);
    if (updateCount > 0) this.#l2.markDirty(table);
    if (released !== null) this.#pendingFrees.push(...released);
    return stop - pos;
  }

  /** The L2 table for L1 entry `l1Index`, ready to be changed: allocated if missing, COPIED ensured. */
  #l2TableForWrite(l1Index: number): CachedTable {
    const existing = this.#l2TableAt(l1Index);
    const at = l1Index * ENTRY_BYTES;
    const refcounts = this.#writableRefcounts();
    if (existing !== null) {
      if ((readU32(this.#l1, at) & COPIED_BIT) === 0) {
        const offset = existing.offset;
        if (refcounts.get(offset / this.#clusterSize) !== 1) {
          throw new TandemError(ErrorCode.DiskUnsupported, `${this.#file.path}: L2 table ${l1Index} is shared (internal snapshots); writing to it is not supported`);
        }
        writeEntry(this.#l1View, at, offset, true);
        this.#markL1Dirty(l1Index);
      }
      return existing;
    }
    const cluster = refcounts.allocate();
    this.#metadata.addCluster(cluster, Metadata.ActiveL2);
    const table = this.#l2.create(cluster * this.#clusterSize);
    writeEntry(this.#l1View, at, table.offset, true);
    this.#markL1Dirty(l1Index);
    this.#recentL1Index = -1;
    return table;
  }

  /**
   * Makes [offset, offset + length) read as zeros: whole clusters through their L2 entries
   * (ZERO flag in version 3; unallocated in version 2 without a backing file; `unmap` frees
   * their host clusters), partial clusters and what the format cannot express by writing zeros.
   */
  #zeroRange(offset: number, length: number, unmap: boolean): void {
    const cs = this.#clusterSize;
    const end = offset + length;
    for (let pos = offset; pos < end; ) {
      const cluster = Math.floor(pos / cs);
      const start = cluster * cs;
      const clusterEnd = Math.min(start + cs, this.size);
      const n = Math.min(clusterEnd, end) - pos;
      const kind = this.#lookup(cluster);
      if (this.#noL2Table && this.#readsAsZero(kind, cluster) && !(this.#header.version === 3 && this.#header.backingFile !== undefined)) {
        // Nothing mapped here reads anything but zeros, and nothing needs a zero flag: skip the L2 range.
        pos = Math.min(end, this.#l2RangeEnd(cluster));
        continue;
      }
      if (pos === start && pos + n === clusterEnd) this.#zeroCluster(cluster, unmap);
      else if (!this.#readsAsZero(kind, cluster)) this.#writeData(pos, this.#zeros.subarray(0, n));
      pos += n;
    }
  }

  /** The guest byte where the L2 table mapping guest cluster `cluster` stops mapping. */
  #l2RangeEnd(cluster: number): number {
    return (Math.floor(cluster / this.#l2Entries) + 1) * this.#l2Entries * this.#clusterSize;
  }

  #zeroCluster(cluster: number, unmap: boolean): void {
    const kind = this.#lookup(cluster);
    const hi = this.#hi;
    const lo = this.#lo;
    const hasBacking = this.#header.backingFile !== undefined;
    let entryHost = 0;
    let zeroFlag = true;
    if (this.#header.version === 2) {
      if (hasBacking) {
        // Version 2 cannot say "zeros" over a backing file: store them.
        this.#writeData(cluster * this.#clusterSize, this.#zeros.subarray(0, Math.min(this.#clusterSize, this.size - cluster * this.#clusterSize)));
        return;
      }
      if (kind === L2Kind.Unallocated) return;
      zeroFlag = false;
    } else {
      if (kind === L2Kind.ZeroPlain || (kind === L2Kind.Unallocated && !hasBacking)) return;
      if (kind === L2Kind.ZeroAllocated && !unmap) return;
      // Without unmap, a cluster of ours keeps its host cluster (QEMU's preallocated zero cluster).
      const keep = !unmap && kind === L2Kind.Normal && (hi & COPIED_BIT) !== 0;
      if (keep) entryHost = entryOffset(hi, lo);
    }
    const l1Index = Math.floor(cluster / this.#l2Entries);
    const table = this.#l2TableForWrite(l1Index);
    const at = (cluster - l1Index * this.#l2Entries) * ENTRY_BYTES;
    writeEntry(table.view, at, entryHost, entryHost !== 0, zeroFlag);
    this.#l2.markDirty(table);
    if (entryHost === 0) {
      const released = this.#hostClusters(kind, hi, lo, null);
      if (released !== null) this.#pendingFrees.push(...released);
    }
  }

  /** Appends the host clusters an L2 entry of `kind` holds to `into` (made when needed); returns it. */
  #hostClusters(kind: L2Kind, hi: number, lo: number, into: number[] | null): number[] | null {
    const cs = this.#clusterSize;
    if (kind === L2Kind.Normal || kind === L2Kind.ZeroAllocated) {
      (into ??= []).push(entryOffset(hi, lo) / cs);
    } else if (kind === L2Kind.Compressed) {
      const offset = compressedOffset(hi, lo, this.#clusterBits);
      const last = Math.floor((offset + compressedByteLength(hi, lo, this.#clusterBits) - 1) / cs);
      into ??= [];
      for (let c = Math.floor(offset / cs); c <= last; c++) into.push(c);
    }
    return into;
  }

  // ---- write-back ----

  /** Writes every dirty piece of metadata in crash-safe order (see the top of this file). */
  #writeBack(): void {
    const refcounts = this.#refcounts;
    if (refcounts === null) return;
    const refcountsDue = !this.#lazyRefcounts && refcounts.dirty;
    const l1Dirty = this.#l1DirtyTo > this.#l1DirtyFrom;
    if (!this.#l2.dirty && !l1Dirty && !refcountsDue && this.#pendingFrees.length === 0) {
      if (this.#file.unsynced) this.#file.sync();
      return;
    }
    this.#beforeMetadataWrite();
    // Clusters allocated past the end must exist before anything points at them.
    this.#file.extendTo(refcounts.highWater * this.#clusterSize);
    if (this.#file.unsynced) this.#file.sync();
    if (!this.#lazyRefcounts) refcounts.writeBack();
    if (this.#l2.writeBack() > 0) this.#file.sync();
    if (this.#l1DirtyTo > this.#l1DirtyFrom) {
      const from = this.#l1DirtyFrom * ENTRY_BYTES;
      const to = this.#l1DirtyTo * ENTRY_BYTES;
      this.#file.write(this.#header.l1TableOffset + from, this.#l1.subarray(from, to), Metadata.ActiveL1);
      this.#l1DirtyFrom = Infinity;
      this.#l1DirtyTo = 0;
      this.#file.sync();
    }
    if (this.#pendingFrees.length > 0) {
      const frees = this.#pendingFrees;
      this.#pendingFrees = [];
      this.#compressed.forget();
      for (const cluster of frees) refcounts.decrement(cluster);
      if (!this.#lazyRefcounts) refcounts.writeBack();
    }
  }

  /**
   * Before the first metadata write of this session: set the dirty bit (lazy refcounts) and
   * clear autoclear bits this writer does not maintain (qcow2.rst), durably.
   */
  #beforeMetadataWrite(): void {
    const h = this.#header;
    if (h.version !== 3) return;
    if (h.autoclearFeatures !== 0n) {
      h.autoclearFeatures = 0n;
      this.#writeHeaderU64(H_AUTOCLEAR_FEATURES, 0n);
      this.#file.sync();
    }
    if (this.#lazyRefcounts && !this.#dirtyOnDisk) this.#setDirtyBit(true);
  }

  #setDirtyBit(dirty: boolean): void {
    const h = this.#header;
    h.incompatibleFeatures = dirty ? h.incompatibleFeatures | Incompatible.Dirty : h.incompatibleFeatures & ~Incompatible.Dirty;
    this.#writeHeaderU64(H_INCOMPATIBLE_FEATURES, h.incompatibleFeatures);
    this.#file.sync();
    this.#dirtyOnDisk = dirty;
  }

  /** Points the header at a grown refcount table (offset and cluster count, one 12-byte write), durably. */
  #moveRefcountTable(offset: number, clusters: number): void {
    const bytes = new Uint8Array(12);
    const view = new DataView(bytes.buffer);
    view.setBigUint64(0, BigInt(offset));
    view.setUint32(8, clusters);
    this.#file.write(H_REFCOUNT_TABLE_OFFSET, bytes, Metadata.Header);
    this.#file.sync();
    this.#header.refcountTableOffset = offset;
    this.#header.refcountTableClusters = clusters;
  }

  #writeHeaderU64(at: number, value: bigint): void {
    const bytes = new Uint8Array(8);
    new DataView(bytes.buffer).setBigUint64(0, value);
    this.#file.write(at, bytes, Metadata.Header);
  }

  #markL1Dirty(index: number): void {
    if (index < this.#l1DirtyFrom) this.#l1DirtyFrom = index;
    if (index + 1 > this.#l1DirtyTo) this.#l1DirtyTo = index + 1;
  }

  #writableRefcounts(): Refcounts {
    if (this.#refcounts === null) throw new TandemError(ErrorCode.DiskReadOnly, `${this.#file.path} is open read-only`);
    return this.#refcounts;
  }

  #refuseIfCorrupt(): void {
    if ((this.#header.incompatibleFeatures & Incompatible.Corrupt) !== 0n && !this.closed) {
      throw new TandemError(ErrorCode.DiskReadOnly, `${this.#file.path} is marked corrupt and can only be read; repair it with tandem img check -r all (or qemu-img check -r all)`);
    }
  }

  /**
   * A write would overlap metadata of `kinds`: marks the image corrupt, as QEMU does
   * (`qcow2_signal_corruption`), and refuses the write. A version 3 image gets the corrupt bit
   * in its header, synced, so no later open writes to it before a repair; version 2 has no such
   * bit, so there the mark lasts until close. Metadata already changed in memory is still written
   * back on flush, each write passing the same check, so earlier acknowledged writes are kept.
   */
  #refuseOverlap(kinds: MetadataKinds, offset: number, bytes: number): never {
    const what = `preventing invalid write on metadata (overlaps with ${metadataName(kinds)}): ${bytes} bytes at offset ${offset}`;
    const h = this.#header;
    if ((h.incompatibleFeatures & Incompatible.Corrupt) === 0n) {
      h.incompatibleFeatures |= Incompatible.Corrupt;
      if (h.version === 3) {
        this.#writeHeaderU64(H_INCOMPATIBLE_FEATURES, h.incompatibleFeatures);
        this.#file.sync();
      }
    }
    throw new TandemError(ErrorCode.DiskCorrupt, `${this.#file.path}: marking image as corrupt: ${what}; repair it with tandem img check -r all`);
  }

  #refuseIfShared(): void {
    if (this.#header.nbSnapshots > 0) {
      throw new TandemError(ErrorCode.DiskUnsupported, `${this.#file.path} has ${this.#header.nbSnapshots} internal snapshot(s); writing to images with snapshots is not supported (qemu-img snapshot -d removes them)`);
    }
  }

  #corrupt(what: string): TandemError {
    return new TandemError(ErrorCode.DiskFormat, `${this.#file.path}: ${what} (corrupt image; qemu-img check shows the damage)`);
  }
}

// Kinds of a read run in doRead.
const RUN_NONE = 0;
const RUN_HOST = 1;
const RUN_BACKING = 2;
const RUN_ZERO = 3;
