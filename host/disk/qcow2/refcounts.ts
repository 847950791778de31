/**
 * qcow2 host cluster accounting: the refcount table (kept in memory), refcount blocks (in a
 * write-back cache), cluster allocation, new refcount blocks and growth of the refcount table.
 * Layout from QEMU's docs/interop/qcow2.rst ("Host cluster management"; cow-disks.md 2.4).
 *
 * Crash safety (cow-disks.md 3.1): an increment may reach the file at any time, since a refcount
 * higher than the real references is only a leak. A new refcount block is written and synced
 * before the table entry that points to it; a grown table is written and synced before the
 * header points to it. Decrements are the caller's business: it applies them only once nothing
 * on disk references the cluster any more.
 */

import { ErrorCode, TandemError } from "../../errors.ts";
import type { Qcow2Geometry } from "./header.ts";
import { MAX_REFCOUNT_TABLE_BYTES } from "./header.ts";
import type { ImageFile } from "./image-file.ts";
import { Metadata, type MetadataIndex, metadataName } from "./metadata-index.ts";
import { ENTRY_BYTES, readU32 } from "./l2-entry.ts";
import { readRefcount, writeRefcount } from "./refcount-entry.ts";
import { TableCache, type CachedTable } from "./table-cache.ts";

const TWO_32 = 0x100000000;
/** A refcount table entry's reserved bits 0-8 (qcow2.rst: "Bits 0-8: Reserved"). */
const TABLE_ENTRY_RESERVED_LO = 0x1ff;
/** Rounds of the growth-area fixpoint; it settles in two or three. */
const MAX_GROWTH_ROUNDS = 64;

/** What trying to take one cluster came to. */
const Take = {
  Taken: 0,
  /** In use (or just made a refcount block). */
  Busy: 1,
  /** The table grew to cover it: try again. */
  Retry: 2,
} as const;
type Take = (typeof Take)[keyof typeof Take];

/** What the refcount store needs to know and do outside itself. */
export interface RefcountOptions {
  geometry: Qcow2Geometry;
  tableOffset: number;
  tableClusters: number;
  /** Refcount blocks kept in memory at most. */
  cacheBlocks: number;
  /**
   * The image's metadata, which a refcount of 0 must not hand out (that refusal marks the image
   * corrupt) and no refcount block may overlap; this store records its own blocks and table in it.
   */
  metadata: MetadataIndex;
  /** Called before the store writes metadata outside a flush (table growth): lets the owner set its dirty bit. */
  beforeMetadataWrite: () => void;
  /** Points the header at a new refcount table, durably (write and sync). */
  moveTable: (offset: number, clusters: number) => void;
}

/** The refcounts of one qcow2 image. */
export class Refcounts {
  readonly #file: ImageFile;
  readonly #options: RefcountOptions;
  readonly #clusterSize: number;
  readonly #bits: number;
  /** Clusters one refcount block covers. */
  readonly #perBlock: number;
  readonly #blocks: TableCache;
  #table: Uint8Array;
  #tableView: DataView;
  #tableOffset: number;
  #tableClusters: number;
  /** Table entries changed in memory (new refcount blocks) and not yet written. */
  readonly #dirtyEntries = new Set<number>();
  /** No cluster below this is free, as far as allocation knows. */
  #hint = 0;
  /**
   * Clusters from here on were never in the file nor allocated: they read as zeros, and any
   * refcount the file has for them is a leak left by a crash.
   */
  #highWater: number;
  #lastAllocationFresh = false;

  constructor(file: ImageFile, table: Uint8Array, options: RefcountOptions) {
    this.#file = file;
    this.#options = options;
    this.#clusterSize = options.geometry.clusterSize;
    this.#bits = options.geometry.refcountBits;
    this.#perBlock = options.geometry.refcountBlockEntries;
    this.#table = table;
    this.#tableView = new DataView(table.buffer, table.byteOffset, table.byteLength);
    this.#tableOffset = options.tableOffset;
    this.#tableClusters = options.tableClusters;
    this.#highWater = Math.ceil(file.length / this.#clusterSize);
    this.#blocks = new TableCache(file, {
      tableBytes: this.#clusterSize,
      capacity: Math.max(2, options.cacheBlocks),
      what: "refcount block",
      kind: Metadata.RefcountBlock,
      // Increments may reach the file in any order, so a dirty block can simply be written.
      makeClean: (block) => this.#blocks.writeOne(block),
    });
  }

  /** Whether the last cluster {@link allocate} returned lay at or past the high water mark (so it reads as zeros). */
  get lastAllocationFresh(): boolean {
    return this.#lastAllocationFresh;
  }

  /** The first cluster index that was never in the file nor allocated. */
  get highWater(): number {
    return this.#highWater;
  }
  /** True if refcount blocks or table entries changed in memory since they were written. */
  get dirty(): boolean {
    return this.#blocks.dirty || this.#dirtyEntries.size > 0;
  }

  /** The refcount of host cluster `cluster`. */
  get(cluster: number): number {
    const block = this.#blockFor(cluster);
    return block === null ? 0 : readRefcount(block.bytes, cluster % this.#perBlock, this.#bits, this.#blockName(block));
  }

  /** Lowers the refcount of `cluster` by one (a reference to it is gone from the file). */
  decrement(cluster: number): void {
    const block = this.#blockFor(cluster);
    const index = cluster % this.#perBlock;
    const value = block === null ? 0 : readRefcount(block.bytes, index, this.#bits, this.#blockName(block));
    if (block === null || value === 0) {
      throw new TandemError(ErrorCode.DiskFormat, `${this.#file.path}: cluster ${cluster} is freed but its refcount is already 0 (corrupt refcounts; repair with qemu-img check -r all)`);
    }
    writeRefcount(block.bytes, index, this.#bits, value - 1);
    this.#blocks.markDirty(block);
    if (value === 1 && cluster < this.#hint) this.#hint = cluster;
  }

  /**
   * Allocates one cluster (refcount 0 -> 1, in memory) and returns its index: `prefer` if it is
   * free and counted, else the first free cluster. Sets {@link lastAllocationFresh}.
   */
  allocate(prefer = -1): number {
    if (prefer >= 0 && this.#take(prefer) === Take.Taken) return prefer;
    // Every cluster between the hint and the high water mark is visited at most once per scan,
    // and the high water mark itself is always free.
    for (let cluster = this.#hint; ; cluster++) {
      let outcome = this.#take(cluster);
      // A grown table covers the cluster on the second try.
      if (outcome === Take.Retry) outcome = this.#take(cluster);
      if (outcome === Take.Taken) {
        if (cluster >= this.#hint) this.#hint = cluster + 1;
        return cluster;
      }
      if (outcome === Take.Retry) throw new TandemError(ErrorCode.InvalidState, `${this.#file.path}: the refcount table does not cover cluster ${cluster} after growing`);
    }
  }

  /**
   * Writes what changed: refcount blocks, then (synced first) the table entries of new blocks.
   * Syncs after each step that wrote something.
   */
  writeBack(): void {
    if (this.#blocks.writeBack() > 0) this.#file.sync();
    if (this.#dirtyEntries.size === 0) return;
    for (const index of [...this.#dirtyEntries].sort((a, b) => a - b)) {
      this.#file.write(this.#tableOffset + index * ENTRY_BYTES, this.#table.subarray(index * ENTRY_BYTES, (index + 1) * ENTRY_BYTES), Metadata.RefcountTable);
    }
    this.#dirtyEntries.clear();
    this.#file.sync();
  }

  /** Takes `cluster` if it is free; creates the refcount block or grows the table it needs on the way. */
  #take(cluster: number): Take {
    const tableIndex = Math.floor(cluster / this.#perBlock);
    if (tableIndex >= this.#table.length / ENTRY_BYTES) {
      this.#grow(tableIndex);
      return Take.Retry;
    }
    const blockOffset = this.#tableEntry(tableIndex);
    if (blockOffset === 0) {
      // No refcount block covers this range yet: put one here, counting itself.
      this.#checkUnprotected(cluster);
      this.#options.metadata.addCluster(cluster, Metadata.RefcountBlock);
      const block = this.#blocks.create(cluster * this.#clusterSize);
      writeRefcount(block.bytes, cluster % this.#perBlock, this.#bits, 1);
      this.#setTableEntry(tableIndex, cluster * this.#clusterSize);
      this.#dirtyEntries.add(tableIndex);
      this.#raiseHighWater(cluster + 1);
      return Take.Busy;
    }
    const block = this.#loadBlock(blockOffset, tableIndex);
    const index = cluster % this.#perBlock;
    const fresh = cluster >= this.#highWater;
    // Past the high water mark nothing references a cluster, so a nonzero refcount there is a leak to reuse.
    if (!fresh && readRefcount(block.bytes, index, this.#bits, this.#blockName(block)) !== 0) return Take.Busy;
    this.#checkUnprotected(cluster);
    writeRefcount(block.bytes, index, this.#bits, 1);
    this.#blocks.markDirty(block);
    this.#lastAllocationFresh = fresh;
    this.#raiseHighWater(cluster + 1);
    return Take.Taken;
  }

  /**
   * Grows the refcount table to cover table index `needed`: a new table, and refcount blocks for
   * the area holding them, go past the high water mark; they are written and synced, then the
   * header is pointed at the new table (synced), then the old table's clusters are freed.
   */
  #grow(needed: number): void {
    const perTableCluster = this.#clusterSize / ENTRY_BYTES;
    const oldEntries = this.#table.length / ENTRY_BYTES;
    let entries = Math.max(needed + 1, Math.ceil(oldEntries * 1.5));
    const start = this.#highWater;
    let newBlocks: number[] = [];
    let tableClusters = 0;
    for (let round = 0; ; round++) {
      if (round >= MAX_GROWTH_ROUNDS) throw new TandemError(ErrorCode.InvalidState, `${this.#file.path}: refcount table growth did not settle`);
      tableClusters = Math.ceil(entries / perTableCluster);
      const end = start + newBlocks.length + tableClusters;
      const uncovered: number[] = [];
      const last = Math.floor((end - 1) / this.#perBlock);
      for (let index = Math.floor(start / this.#perBlock); index <= last; index++) {
        if (index >= oldEntries || this.#tableEntry(index) === 0) uncovered.push(index);
      }
      const settled = uncovered.length === newBlocks.length && last < entries;
      newBlocks = uncovered;
      if (last >= entries) entries = last + 1;
      if (settled) break;
    }
    entries = tableClusters * perTableCluster;
    if (tableClusters * this.#clusterSize > MAX_REFCOUNT_TABLE_BYTES) {
      throw new TandemError(ErrorCode.DiskUnsupported, `${this.#file.path}: the image would need a refcount table over QEMU's ${MAX_REFCOUNT_TABLE_BYTES}-byte limit; use larger clusters`);
    }
    this.#options.beforeMetadataWrite();

    const table = new Uint8Array(tableClusters * this.#clusterSize);
    table.set(this.#table);
    const view = new DataView(table.buffer);
    const setEntry = (index: number, offset: number): void => {
      view.setUint32(index * ENTRY_BYTES, Math.floor(offset / TWO_32));
      view.setUint32(index * ENTRY_BYTES + 4, offset % TWO_32);
    };
    // New blocks are built outside the cache (which could evict them half-filled) and written directly.
    const created = new Map<number, Uint8Array>();
    newBlocks.forEach((index, i) => {
      this.#checkUnprotected(start + i);
      this.#options.metadata.addCluster(start + i, Metadata.RefcountBlock);
      created.set(index, new Uint8Array(this.#clusterSize));
      setEntry(index, (start + i) * this.#clusterSize);
    });
    const areaEnd = start + newBlocks.length + tableClusters;
    for (let cluster = start; cluster < areaEnd; cluster++) {
      const index = Math.floor(cluster / this.#perBlock);
      const bytes = created.get(index);
      if (bytes !== undefined) {
        writeRefcount(bytes, cluster % this.#perBlock, this.#bits, 1);
      } else {
        const block = this.#loadBlock(this.#tableEntry(index), index);
        writeRefcount(block.bytes, cluster % this.#perBlock, this.#bits, 1);
        this.#blocks.markDirty(block);
      }
    }
    // Every block (new and dirty) and the new table, durable before the header moves.
    newBlocks.forEach((index, i) => this.#file.write((start + i) * this.#clusterSize, created.get(index) as Uint8Array, Metadata.RefcountBlock));
    this.#blocks.writeBack();
    const tableOffset = (start + newBlocks.length) * this.#clusterSize;
    this.#file.write(tableOffset, table);
    this.#file.sync();
    this.#options.moveTable(tableOffset, tableClusters);
    this.#options.metadata.setRange(Metadata.RefcountTable, tableOffset, tableClusters * this.#clusterSize);

    const oldOffset = this.#tableOffset;
    const oldClusters = this.#tableClusters;
    this.#table = table;
    this.#tableView = view;
    this.#tableOffset = tableOffset;
    this.#tableClusters = tableClusters;
    this.#dirtyEntries.clear();
    this.#raiseHighWater(areaEnd);
    const firstOld = oldOffset / this.#clusterSize;
    for (let cluster = firstOld; cluster < firstOld + oldClusters; cluster++) this.decrement(cluster);
  }

  /** The refcount block covering `cluster`, or null if none does (its refcount is 0). */
  #blockFor(cluster: number): CachedTable | null {
    const tableIndex = Math.floor(cluster / this.#perBlock);
    if (tableIndex >= this.#table.length / ENTRY_BYTES) return null;
    const offset = this.#tableEntry(tableIndex);
    return offset === 0 ? null : this.#loadBlock(offset, tableIndex);
  }

  #loadBlock(offset: number, tableIndex: number): CachedTable {
    // Blocks created in memory are in the cache; anything read must lie inside the file.
    const limit = Math.max(this.#file.length, this.#highWater * this.#clusterSize);
    if (offset + this.#clusterSize > limit) {
      throw new TandemError(ErrorCode.DiskFormat, `${this.#file.path}: refcount block ${tableIndex} at ${offset} lies past the end of the file`);
    }
    const overlap = this.#options.metadata.overlap(offset, this.#clusterSize, Metadata.RefcountBlock);
    if (overlap !== 0) {
      throw new TandemError(ErrorCode.DiskFormat, `${this.#file.path}: refcount block ${tableIndex} at ${offset} overlaps the ${metadataName(overlap)} (corrupt image)`);
    }
    return this.#blocks.get(offset);
  }

  /** The refcount block offset in table entry `index`, validated as aligned. */
  #tableEntry(index: number): number {
    const hi = readU32(this.#table, index * ENTRY_BYTES);
    const lo = readU32(this.#table, index * ENTRY_BYTES + 4);
    const offset = hi * TWO_32 + lo;
    if ((lo & TABLE_ENTRY_RESERVED_LO) !== 0 || offset % this.#clusterSize !== 0) {
      throw new TandemError(ErrorCode.DiskFormat, `${this.#file.path}: refcount table entry ${index} (${offset}) is not cluster-aligned`);
    }
    return offset;
  }

  #setTableEntry(index: number, offset: number): void {
    this.#tableView.setUint32(index * ENTRY_BYTES, Math.floor(offset / TWO_32));
    this.#tableView.setUint32(index * ENTRY_BYTES + 4, offset % TWO_32);
  }

  /** Refuses to hand out a cluster that holds metadata although its refcount is 0: the guard marks the image corrupt. */
  #checkUnprotected(cluster: number): void {
    this.#options.metadata.guard(cluster * this.#clusterSize, this.#clusterSize, 0);
  }

  #raiseHighWater(end: number): void {
    if (end > this.#highWater) this.#highWater = end;
  }

  #blockName(block: CachedTable): string {
    return `${this.#file.path}: refcount block at ${block.offset}`;
  }
}
