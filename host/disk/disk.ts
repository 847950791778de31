/**
 * The Disk contract (docs/disks.md): what every disk tandem serves or replicates can do, whatever
 * its format. A disk is addressed in bytes; formats keep their own block sizes inside.
 *
 * Disks are synchronous on purpose. Image files are local, and a positioned read or write
 * through `node:fs`'s sync calls costs 1-5 µs on Node, Deno and Bun, while a promise-based one
 * goes through a thread pool at several times that. Synchronous calls also make write ordering
 * (data, then refcounts, then L2, then L1) a matter of statement order, and emulator device
 * models (v86's IDE) call their disks synchronously.
 */

import { ErrorCode, TandemError } from "../errors.ts";
import type { MachineDisk } from "../machine/machine.ts";

/** One run of a disk with the same allocation status, as `qemu-img map --output=json` reports it. */
export interface DiskExtent {
  /** Byte offset in the disk. */
  offset: number;
  /** Bytes. */
  length: number;
  /** Some layer of the chain (this image or a backing file) decides what this range holds. */
  present: boolean;
  /** The range reads as zeros, known from metadata alone. */
  zero: boolean;
  /** The range is stored as data (not a zero cluster, not a hole). */
  data: boolean;
  /** The chain layer that decides the range: 0 is this image, 1 its backing file, and so on. */
  depth: number;
  /** Where the bytes lie in that layer's file, when they lie there uncompressed. */
  fileOffset?: number;
}

/** What `tandem img info` shows of a disk. */
export interface DiskInfo {
  /** The format's registry name: "raw", "cow", "qcow2". */
  format: string;
  /** The image file. */
  fileName: string;
  /** The disk's size as the guest sees it, in bytes. */
  virtualSize: number;
  /** The image file's length in bytes. */
  fileSize: number;
  /** The format's allocation unit, if it has one. */
  clusterSize?: number;
  /** The backing file's name as the image records it. */
  backingFile?: string;
  /** The backing file's format as the image records it. */
  backingFormat?: string;
  /** The image was not closed cleanly and its metadata needs repair (qcow2 lazy refcounts). */
  dirty?: boolean;
  /** Facts only this format has (qcow2: version, refcount bits, lazy refcounts...). */
  formatSpecific?: Record<string, string | number | boolean>;
}

/** A disk, of any format. */
export interface Disk extends MachineDisk {
  /** The format's registry name. */
  readonly format: string;
  /** Bytes, as the guest sees them. */
  readonly size: number;
  /** Writes, discards and zeroing fail with E_DISK_READ_ONLY. */
  readonly readOnly: boolean;
  /** The disk that unallocated ranges are read from, or null. */
  readonly backing: Disk | null;
  /** Fills `target` with the bytes at `offset`. */
  readInto(offset: number, target: Uint8Array): void;
  /** A copy of `length` bytes at `offset`. */
  read(offset: number, length: number): Uint8Array;
  /** Writes `data` at `offset`. Durable only after {@link flush} (or at once in sync mode). */
  write(offset: number, data: Uint8Array): void;
  /** Makes `length` bytes at `offset` read as zeros, without storing zeros where the format can avoid it. */
  writeZeroes(offset: number, length: number): void;
  /** Frees the range where the format can; afterwards it reads as zeros. */
  discard(offset: number, length: number): void;
  /** Makes every completed write durable, metadata included, in crash-safe order. */
  flush(): void;
  /** The allocation status of `length` bytes at `offset`, as consecutive extents covering the range. */
  map(offset: number, length: number): DiskExtent[];
  /** What `tandem img info` shows. */
  info(): DiskInfo;
  /** Flushes (if writable), marks the image clean and closes it and its backing chain. */
  close(): void;
}

/**
 * The checks every format shares (ranges, read-only, closed) and `read` from `readInto`; a format
 * implements the `do*` methods, which see only valid in-range calls on an open disk.
 */
export abstract class DiskBase implements Disk {
  abstract readonly format: string;
  abstract readonly size: number;
  abstract readonly readOnly: boolean;
  abstract readonly backing: Disk | null;
  #closed = false;

  protected abstract doRead(offset: number, target: Uint8Array): void;
  protected abstract doWrite(offset: number, data: Uint8Array): void;
  protected abstract doWriteZeroes(offset: number, length: number): void;
  protected abstract doDiscard(offset: number, length: number): void;
  protected abstract doFlush(): void;
  protected abstract doMap(offset: number, length: number): DiskExtent[];
  protected abstract doClose(): void;
  abstract info(): DiskInfo;

  readInto(offset: number, target: Uint8Array): void {
    this.#check(offset, target.length, false);
    if (target.length > 0) this.doRead(offset, target);
  }
  read(offset: number, length: number): Uint8Array {
    this.#check(offset, length, false);
    const target = new Uint8Array(length);
    if (length > 0) this.doRead(offset, target);
    return target;
  }
  write(offset: number, data: Uint8Array): void {
    this.#check(offset, data.length, true);
    if (data.length > 0) this.doWrite(offset, data);
  }
  writeZeroes(offset: number, length: number): void {
    this.#check(offset, length, true);
    if (length > 0) this.doWriteZeroes(offset, length);
  }
  discard(offset: number, length: number): void {
    this.#check(offset, length, true);
    if (length > 0) this.doDiscard(offset, length);
  }
  flush(): void {
    this.#open();
    if (!this.readOnly) this.doFlush();
  }
  map(offset: number, length: number): DiskExtent[] {
    this.#check(offset, length, false);
    return length > 0 ? this.doMap(offset, length) : [];
  }
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.doClose();
  }
  /** True once {@link close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  #open(): void {
    if (this.#closed) throw new TandemError(ErrorCode.InvalidState, `the ${this.format} disk is closed`);
  }
  #check(offset: number, length: number, writing: boolean): void {
    this.#open();
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new TandemError(ErrorCode.OutOfRange, `disk access of ${length} bytes at ${offset} is outside the ${this.size}-byte ${this.format} disk`);
    }
    if (writing && this.readOnly) throw new TandemError(ErrorCode.DiskReadOnly, `the ${this.format} disk is read-only`);
  }
}

/** Merges neighbouring extents that say the same thing, as `qemu-img map` does. */
export function mergeExtents(extents: readonly DiskExtent[]): DiskExtent[] {
  const merged: DiskExtent[] = [];
  for (const e of extents) {
    const last = merged[merged.length - 1];
    if (
      last !== undefined &&
      last.offset + last.length === e.offset &&
      last.present === e.present &&
      last.zero === e.zero &&
      last.data === e.data &&
      last.depth === e.depth &&
      (last.fileOffset === undefined) === (e.fileOffset === undefined) &&
      (last.fileOffset === undefined || last.fileOffset + last.length === e.fileOffset)
    ) {
      last.length += e.length;
    } else {
      merged.push({ ...e });
    }
  }
  return merged;
}
