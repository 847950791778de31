/**
 * A least-recently-used cache of cluster-sized metadata tables (L2 tables, refcount blocks),
 * keyed by host offset, with write-back dirty tracking. The owner decides what evicting a dirty
 * table takes (an L2 table may only reach the file after the refcounts it depends on), so the
 * cache asks it through a callback instead of writing on its own.
 */

import { ErrorCode, TandemError } from "../../errors.ts";
import { readExact } from "../block-file.ts";
import type { ImageFile } from "./image-file.ts";
import type { MetadataKinds } from "./metadata-index.ts";

/** One cached table. */
export interface CachedTable {
  /** Host offset of the table in the image file. */
  readonly offset: number;
  readonly bytes: Uint8Array;
  readonly view: DataView;
  /** Changed in memory since it was last written ({@link TableCache.markDirty}). */
  readonly dirty: boolean;
}

/** The cache's own view of a table: it alone flips `dirty`. */
interface Entry extends CachedTable {
  dirty: boolean;
}

/** What the cache needs from its owner. */
export interface TableCacheOptions {
  /** Bytes per table (the cluster size). */
  tableBytes: number;
  /** Tables kept at most (at least 1). */
  capacity: number;
  /** What the tables are, for messages ("L2 table"). */
  what: string;
  /** Their kind in the metadata index: the only metadata their write-back may overwrite. */
  kind: MetadataKinds;
  /**
   * Called when the least recently used table is dirty and must leave: the owner makes it clean
   * (by {@link TableCache.writeBack} after whatever must precede it reaches the file).
   */
  makeClean: (table: CachedTable) => void;
}

/** An LRU of metadata tables read from and written to one image file. */
export class TableCache {
  readonly #file: ImageFile;
  readonly #options: TableCacheOptions;
  /** Map iteration order is insertion order: the first entry is the least recently used. */
  readonly #tables = new Map<number, Entry>();
  readonly #dirty = new Set<Entry>();
  /** The last table returned: repeated hits on it skip the reordering. */
  #last: Entry | null = null;
  #evictions = 0;

  constructor(file: ImageFile, options: TableCacheOptions) {
    this.#file = file;
    this.#options = { ...options, capacity: Math.max(1, Math.floor(options.capacity)) };
  }

  /** The table at `offset`, read from the file if it is not cached. The caller has validated `offset`. */
  get(offset: number): CachedTable {
    const last = this.#last;
    if (last !== null && last.offset === offset) return last;
    let table = this.#tables.get(offset);
    if (table !== undefined) {
      this.#tables.delete(offset);
      this.#tables.set(offset, table);
    } else {
      table = this.#insert(offset);
      readExact(this.#file.file, offset, table.bytes, this.#options.what);
    }
    this.#last = table;
    return table;
  }

  /** A new all-zero table for `offset` (a freshly allocated cluster), dirty. */
  create(offset: number): CachedTable {
    if (this.#tables.has(offset)) {
      throw new TandemError(ErrorCode.DiskFormat, `${this.#file.path}: ${this.#options.what} at ${offset} is allocated twice (corrupt refcounts; repair with qemu-img check -r all)`);
    }
    const table = this.#insert(offset);
    this.#markEntryDirty(table);
    this.#last = table;
    return table;
  }

  /** Records that `table` (returned by this cache) changed in memory. */
  markDirty(table: CachedTable): void {
    const entry = this.#tables.get(table.offset);
    if (entry !== table) throw new TandemError(ErrorCode.InvalidState, `${this.#file.path}: ${this.#options.what} at ${table.offset} changed after it left the cache`);
    this.#markEntryDirty(entry);
  }

  /** Tables evicted so far: a caller holding a table may keep using it while this has not changed. */
  get evictions(): number {
    return this.#evictions;
  }

  /** True if any cached table is dirty. */
  get dirty(): boolean {
    return this.#dirty.size > 0;
  }

  /** Writes every dirty table (in file order) and marks it clean; returns how many were written. No sync. */
  writeBack(): number {
    const dirty = [...this.#dirty].sort((a, b) => a.offset - b.offset);
    for (const table of dirty) this.#writeEntry(table);
    return dirty.length;
  }

  /** Writes one table if it is dirty and marks it clean. No sync. */
  writeOne(table: CachedTable): void {
    const entry = this.#tables.get(table.offset);
    if (entry !== undefined && entry.dirty) this.#writeEntry(entry);
  }

  #markEntryDirty(entry: Entry): void {
    if (entry.dirty) return;
    entry.dirty = true;
    this.#dirty.add(entry);
  }

  #writeEntry(entry: Entry): void {
    this.#file.write(entry.offset, entry.bytes, this.#options.kind);
    entry.dirty = false;
    this.#dirty.delete(entry);
  }

  #insert(offset: number): Entry {
    if (this.#tables.size >= this.#options.capacity) this.#evictOne();
    const bytes = new Uint8Array(this.#options.tableBytes);
    const table: Entry = { offset, bytes, view: new DataView(bytes.buffer), dirty: false };
    this.#tables.set(offset, table);
    return table;
  }

  #evictOne(): void {
    const oldest = this.#tables.values().next().value;
    if (oldest === undefined) return;
    if (oldest.dirty) this.#options.makeClean(oldest);
    if (oldest.dirty) throw new TandemError(ErrorCode.InvalidState, `${this.#file.path}: a dirty ${this.#options.what} could not be written back before eviction`);
    this.#tables.delete(oldest.offset);
    this.#evictions++;
    if (this.#last === oldest) this.#last = null;
  }
}
