/**
 * A cow image as a disk: an overlay of 2^n-byte blocks over an optional base disk, block i's
 * data at data offset + i × block size (the identity mapping of dm-userspace's dscow).
 *
 * Crash order (docs/cow-format.md, "Crash safety"): a block's data is written before the
 * bitmap state that makes it reachable, and synced before that state is written. In sync mode
 * every call syncs data, then writes and syncs the bitmap, before it returns; in write-back
 * mode the bitmap is kept in memory and written by flush() and close(), after a data sync.
 */

import { ErrorCode, TandemError } from "../../errors.ts";
import type { BlockFile } from "../block-file.ts";
import { DiskBase, mergeExtents, type Disk, type DiskExtent, type DiskInfo } from "../disk.ts";
import type { BlockStates } from "./block-states.ts";
import type { CowHeader } from "./cow-header.ts";
import { BlockState, COW_VERSION } from "./cow-layout.ts";

/** How a cow disk was opened. */
export interface CowDiskOptions {
  /** Refuse writes. */
  readOnly: boolean;
  /** Every call is durable before it returns. */
  sync: boolean;
}

/** An open cow image. */
export class CowDisk extends DiskBase {
  readonly format = "cow";
  readonly size: number;
  readonly readOnly: boolean;
  readonly backing: Disk | null;
  readonly #file: BlockFile;
  readonly #header: CowHeader;
  readonly #states: BlockStates;
  readonly #blockSize: number;
  readonly #sync: boolean;
  /** Data was written since the last sync. */
  #unsynced = false;

  /**
   * Wraps an image whose header and states were read from `file` (both validated); `backing` is
   * the opened base, or null when the image has none or it was not opened.
   */
  constructor(file: BlockFile, header: CowHeader, states: BlockStates, backing: Disk | null, options: CowDiskOptions) {
    super();
    this.#file = file;
    this.#header = header;
    this.#states = states;
    this.backing = backing;
    this.size = header.virtualSize;
    this.#blockSize = 2 ** header.blockBits;
    this.readOnly = options.readOnly || file.readOnly;
    this.#sync = options.sync;
  }

  protected doRead(offset: number, target: Uint8Array): void {
    this.#forEachRun(offset, target.length, (state, start, end) => {
      const part = target.subarray(start - offset, end - offset);
      if (state === BlockState.Data) {
        // A block past the end of the file reads as zeros, as a sparse file's hole would; check reports it.
        const n = this.#file.read(this.#header.dataOffset + start, part);
        if (n < part.length) part.fill(0, n);
      } else if (state === BlockState.Zero) {
        part.fill(0);
      } else {
        this.#readAbsent(start, part);
      }
    });
  }

  protected doWrite(offset: number, data: Uint8Array): void {
    const end = offset + data.length;
    const first = this.#blockOf(offset);
    const last = this.#blockOf(end - 1);
    // A block written for the first time is written whole: a partial write merges the rest of
    // it from the base (or zeros). Blocks in between are covered whole by `data` itself.
    let directFrom = offset;
    let directTo = end;
    let head: Uint8Array | null = null;
    let tail: Uint8Array | null = null;
    if (this.#states.get(first) !== BlockState.Data && (offset > this.#blockStart(first) || end < this.#blockEnd(first))) {
      head = this.#mergedBlock(first, offset, data);
      directFrom = Math.min(end, this.#blockEnd(first));
    }
    if (last !== first && this.#states.get(last) !== BlockState.Data && end < this.#blockEnd(last)) {
      tail = this.#mergedBlock(last, offset, data);
      directTo = this.#blockStart(last);
    }
    if (head !== null) this.#file.write(this.#header.dataOffset + this.#blockStart(first), head);
    if (directFrom < directTo) this.#file.write(this.#header.dataOffset + directFrom, data.subarray(directFrom - offset, directTo - offset));
    if (tail !== null) this.#file.write(this.#header.dataOffset + this.#blockStart(last), tail);

    let allocated = false;
    for (let i = first; i <= last; i++) {
      if (this.#states.get(i) !== BlockState.Data) {
        this.#states.set(i, BlockState.Data);
        allocated = true;
      }
    }
    this.#commit(true, allocated);
  }

  protected doWriteZeroes(offset: number, length: number): void {
    this.#zero(offset, length);
  }

  protected doDiscard(offset: number, length: number): void {
    this.#zero(offset, length);
  }

  protected doFlush(): void {
    if (!this.#unsynced && !this.#states.dirty) return;
    this.#file.sync();
    this.#unsynced = false;
    if (this.#states.dirty) {
      this.#states.writeDirty(this.#file, this.#header.bitmapOffset);
      this.#file.sync();
    }
  }

  protected doMap(offset: number, length: number): DiskExtent[] {
    const extents: DiskExtent[] = [];
    this.#forEachRun(offset, length, (state, start, end) => {
      const run = { offset: start, length: end - start };
      if (state === BlockState.Data) {
        extents.push({ ...run, present: true, zero: false, data: true, depth: 0, fileOffset: this.#header.dataOffset + start });
      } else if (state === BlockState.Zero) {
        extents.push({ ...run, present: true, zero: true, data: false, depth: 0 });
      } else {
        this.#mapAbsent(start, end, extents);
      }
    });
    return mergeExtents(extents);
  }

  protected doClose(): void {
    try {
      if (!this.readOnly) this.doFlush();
    } finally {
      try {
        this.#file.close();
      } finally {
        this.backing?.close();
      }
    }
  }

  info(): DiskInfo {
    const info: DiskInfo = {
      format: this.format,
      fileName: this.#file.path,
      virtualSize: this.size,
      fileSize: this.#file.size(),
      clusterSize: this.#blockSize,
      formatSpecific: { version: COW_VERSION, blockSize: this.#blockSize },
    };
    if (this.#header.baseName !== null) info.backingFile = this.#header.baseName;
    if (this.#header.baseFormat !== null) info.backingFormat = this.#header.baseFormat;
    return info;
  }

  /** Makes [offset, offset + length) read as zeros: whole blocks by state alone, partial ones in their data. */
  #zero(offset: number, length: number): void {
    const end = offset + length;
    const first = this.#blockOf(offset);
    const last = this.#blockOf(end - 1);
    const hasBase = this.#header.baseName !== null;
    let wrote = false;
    let changed = false;
    // Only the first and last blocks can be covered in part. They go first: copying one from
    // the base may fail, and then no state may have changed yet.
    for (const i of first === last ? [first] : [first, last]) {
      const blockStart = this.#blockStart(i);
      const from = Math.max(offset, blockStart);
      const to = Math.min(end, this.#blockEnd(i));
      if (from === blockStart && to === this.#blockEnd(i)) continue;
      const state = this.#states.get(i);
      if (state === BlockState.Data) {
        this.#file.write(this.#header.dataOffset + from, new Uint8Array(to - from));
        wrote = true;
      } else if (state === BlockState.Absent && hasBase) {
        this.#file.write(this.#header.dataOffset + blockStart, this.#mergedBlock(i, from, new Uint8Array(to - from)));
        this.#states.set(i, BlockState.Data);
        wrote = true;
        changed = true;
      }
    }
    // Without a base an absent block already reads as zeros, and frees its place in the bitmap.
    const wholeState = hasBase ? BlockState.Zero : BlockState.Absent;
    for (let i = first; i <= last; i++) {
      const whole = offset <= this.#blockStart(i) && end >= this.#blockEnd(i);
      if (whole && this.#states.get(i) !== wholeState) {
        this.#states.set(i, wholeState);
        changed = true;
      }
    }
    this.#commit(wrote, changed);
  }

  /** After data writes and state changes: in sync mode make both durable, data first; else note them for flush. */
  #commit(wroteData: boolean, statesChanged: boolean): void {
    if (!this.#sync) {
      if (wroteData) this.#unsynced = true;
      return;
    }
    if (wroteData) this.#file.sync();
    if (statesChanged) {
      this.#states.writeDirty(this.#file, this.#header.bitmapOffset);
      this.#file.sync();
    }
  }

  /** Block `i`'s current contents with `data` (which starts at disk offset `at`) laid over it. */
  #mergedBlock(i: number, at: number, data: Uint8Array): Uint8Array {
    const start = this.#blockStart(i);
    const block = new Uint8Array(this.#blockEnd(i) - start);
    if (this.#states.get(i) === BlockState.Absent) this.#readAbsent(start, block);
    const from = Math.max(at, start);
    const to = Math.min(at + data.length, start + block.length);
    block.set(data.subarray(from - at, to - at), from - start);
    return block;
  }

  /** Reads a range no block of this image holds: from the base, zeros past its end or without one. */
  #readAbsent(offset: number, target: Uint8Array): void {
    if (this.#header.baseName === null) {
      target.fill(0);
      return;
    }
    const base = this.#base();
    const inBase = Math.max(0, Math.min(target.length, base.size - offset));
    if (inBase > 0) base.readInto(offset, target.subarray(0, inBase));
    target.fill(0, inBase);
  }

  #mapAbsent(start: number, end: number, extents: DiskExtent[]): void {
    if (this.#header.baseName === null) {
      extents.push({ offset: start, length: end - start, present: false, zero: true, data: false, depth: 0 });
      return;
    }
    if (this.backing === null) {
      // The base was not opened: what these bytes hold is unknown.
      extents.push({ offset: start, length: end - start, present: false, zero: false, data: false, depth: 0 });
      return;
    }
    const inBaseEnd = Math.max(start, Math.min(end, this.backing.size));
    if (start < inBaseEnd) {
      for (const e of this.backing.map(start, inBaseEnd - start)) extents.push({ ...e, depth: e.depth + 1 });
    }
    if (inBaseEnd < end) extents.push({ offset: inBaseEnd, length: end - inBaseEnd, present: false, zero: true, data: false, depth: 0 });
  }

  #base(): Disk {
    if (this.backing === null) {
      throw new TandemError(ErrorCode.DiskBacking, `${this.#file.path}: its base ${this.#header.baseName} was not opened, so its unallocated blocks cannot be read`);
    }
    return this.backing;
  }

  /** Calls `visit` for each run of blocks in one state, clipped to [offset, offset + length). */
  #forEachRun(offset: number, length: number, visit: (state: BlockState, start: number, end: number) => void): void {
    const end = offset + length;
    const stop = this.#blockOf(end - 1) + 1;
    let pos = offset;
    while (pos < end) {
      const i = this.#blockOf(pos);
      const next = this.#states.runEnd(i, stop);
      const runEnd = Math.min(end, next * this.#blockSize);
      visit(this.#states.get(i), pos, runEnd);
      pos = runEnd;
    }
  }

  #blockOf(offset: number): number {
    return Math.floor(offset / this.#blockSize);
  }
  #blockStart(i: number): number {
    return i * this.#blockSize;
  }
  #blockEnd(i: number): number {
    return Math.min(this.size, (i + 1) * this.#blockSize);
  }
}
