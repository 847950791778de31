/**
 * The primary's persistent record of changed blocks (`IMAGE.tandem-changes`), after QEMU's
 * persistent dirty bitmaps and DRBD's activity log: a bitmap of the image's blocks written since
 * checkpoint `base`, so a standby that restarts holding a checkpoint at or after `base` is sent
 * only those blocks instead of the whole disk (docs/replication.md, "Rejoining").
 *
 * The invariant is a superset: every block written after checkpoint `base` was captured has its
 * bit set. A block's bit is written to the file before the block is written to the image
 * ({@link ChangeLoggedDisk}), so a killed primary never leaves a write the log does not name.
 * When checkpoint C is acknowledged, `base` moves to C and the bitmap shrinks to the blocks
 * written since C was captured: the header (base = C) is written first, then the smaller
 * bitmap, so at every moment the file's bits cover everything since its header's base.
 *
 * The file also gives the image its lineage: a random id made with the log. A standby records
 * the lineage with the checkpoint it holds, so an image is only ever caught up from the primary
 * image it was copied from.
 */

import { existsSync } from "node:fs";
import { dirname } from "node:path";
import { ErrorCode, TandemError } from "../errors.ts";
import { FileBlockFile, syncDirectory, type BlockFile } from "../disk/block-file.ts";
import { crc32 } from "../disk/crc32.ts";
import { DiskBase, type Disk, type DiskExtent, type DiskInfo } from "../disk/disk.ts";
import type { DiskRange } from "../disk/write-tracker.ts";

// The file, byte by byte (little-endian): a header sector, then the bitmap (bit i of byte j is
// block 8j + i) from BITMAP_OFFSET.
/** "TNDMCHLG". */
const MAGIC = Uint8Array.from([0x54, 0x4e, 0x44, 0x4d, 0x43, 0x48, 0x4c, 0x47]);
const VERSION = 1;
const H_MAGIC = 0; // u8[8]
const H_VERSION = 8; // u32
const H_BLOCK_SIZE = 12; // u32
const H_DISK_SIZE = 16; // u64
const H_BASE = 24; // u64: the bitmap covers every write since this checkpoint's capture
const H_LAST = 32; // u64: the last checkpoint acknowledged (numbering continues after it)
const H_LINEAGE = 40; // u8[16]
const H_CRC = 56; // u32: CRC-32 of bytes 0..55
const HEADER_USED = 60;
const BITMAP_OFFSET = 4096;
/** Bytes of a lineage. */
export const LINEAGE_SIZE = 16;
/** Default block size: QEMU's default dirty bitmap granularity (64 KiB, a qcow2 cluster). */
export const DEFAULT_CHANGE_BLOCK = 64 * 1024;

/** The path of the change log of the image at `imagePath`. */
export function changeLogPath(imagePath: string): string {
  return `${imagePath}.tandem-changes`;
}

/** A change log, open. */
export class ChangeLog {
  /** The image's lineage. */
  readonly lineage: Uint8Array;
  /** Bytes per bit. */
  readonly blockSize: number;
  /** The disk's size. */
  readonly diskSize: number;
  /** True if the log was made now (or remade because the old one was unreadable). */
  readonly fresh: boolean;
  readonly #file: BlockFile;
  /** Blocks written since checkpoint `#base` was captured (what the file holds). */
  readonly #bits: Uint8Array;
  /** Blocks written since the last capture: the bitmap after that checkpoint's ACK. */
  readonly #sinceCapture: Uint8Array;
  #base: number;
  #last: number;
  #captured = -1;
  /**
   * A checkpoint was captured and never acknowledged (or none was yet in this session): epochs
   * may be missing from `#sinceCapture`'s history, so the next acknowledgement moves `base`.
   */
  #gap = true;

  private constructor(file: BlockFile, header: { lineage: Uint8Array; blockSize: number; diskSize: number; base: number; last: number }, bits: Uint8Array, fresh: boolean) {
    this.#file = file;
    this.lineage = header.lineage;
    this.blockSize = header.blockSize;
    this.diskSize = header.diskSize;
    this.#base = header.base;
    this.#last = header.last;
    this.#bits = bits;
    this.#sinceCapture = new Uint8Array(bits.length);
    this.fresh = fresh;
  }

  /**
   * Opens the log at `path` for a disk of `diskSize` bytes, or makes a new one (a new lineage:
   * any standby then needs a full copy). An existing log for a different disk size, block size,
   * or with a damaged header is replaced by a new one, for the same reason.
   */
  static open(path: string, diskSize: number, options: { blockSize?: number } = {}): ChangeLog {
    const blockSize = options.blockSize ?? DEFAULT_CHANGE_BLOCK;
    if (!Number.isSafeInteger(blockSize) || blockSize < 512 || (blockSize & (blockSize - 1)) !== 0) {
      throw new TandemError(ErrorCode.BadArgument, `change log block size ${blockSize}: expected a power of two of at least 512`);
    }
    const bitmapBytes = Math.ceil(Math.ceil(diskSize / blockSize) / 8);
    if (existsSync(path)) {
      const file = FileBlockFile.open(path);
      const header = new Uint8Array(HEADER_USED);
      const view = new DataView(header.buffer);
      const valid = file.read(0, header) === HEADER_USED && MAGIC.every((b, i) => header[H_MAGIC + i] === b) &&
        view.getUint32(H_CRC, true) === crc32(header.subarray(0, H_CRC)) && view.getUint32(H_VERSION, true) === VERSION &&
        view.getUint32(H_BLOCK_SIZE, true) === blockSize && getU64(view, H_DISK_SIZE) === diskSize;
      if (valid) {
        const bits = new Uint8Array(bitmapBytes);
        file.read(BITMAP_OFFSET, bits); // a short file reads as clear bits only if they were never set: set bits are written before their block
        return new ChangeLog(file, {
          lineage: header.slice(H_LINEAGE, H_LINEAGE + LINEAGE_SIZE), blockSize, diskSize, base: getU64(view, H_BASE), last: getU64(view, H_LAST),
        }, bits, false);
      }
      file.truncate(0);
      return ChangeLog.#create(file, diskSize, blockSize, bitmapBytes);
    }
    const file = FileBlockFile.open(path, { create: true });
    syncDirectory(dirname(path));
    return ChangeLog.#create(file, diskSize, blockSize, bitmapBytes);
  }

  static #create(file: BlockFile, diskSize: number, blockSize: number, bitmapBytes: number): ChangeLog {
    const lineage = crypto.getRandomValues(new Uint8Array(LINEAGE_SIZE));
    const log = new ChangeLog(file, { lineage, blockSize, diskSize, base: 0, last: 0 }, new Uint8Array(bitmapBytes), true);
    log.#writeHeader();
    file.write(BITMAP_OFFSET, log.#bits);
    file.sync();
    return log;
  }

  /** The checkpoint since whose capture every write is in the bitmap. */
  get base(): number {
    return this.#base;
  }

  /** The last checkpoint acknowledged by a standby: numbering continues after it. */
  get lastCheckpoint(): number {
    return this.#last;
  }

  /** Records that `length` bytes at `offset` are about to be written: call before writing them. */
  mark(offset: number, length: number): void {
    if (length <= 0) return;
    const first = Math.floor(offset / this.blockSize);
    const last = Math.floor((offset + length - 1) / this.blockSize);
    let low = Infinity;
    let high = -1;
    for (let block = first; block <= last; block++) {
      const byte = block >>> 3;
      const bit = 1 << (block & 7);
      this.#sinceCapture[byte] |= bit;
      if ((this.#bits[byte] & bit) === 0) {
        this.#bits[byte] |= bit;
        low = Math.min(low, byte);
        high = byte;
      }
    }
    if (high >= 0) this.#file.write(BITMAP_OFFSET + low, this.#bits.subarray(low, high + 1));
  }

  /** Checkpoint `checkpoint` was captured: writes from now on are the next epoch's. */
  captured(checkpoint: number): void {
    if (this.#captured !== this.#last) this.#gap = true;
    this.#captured = checkpoint;
    this.#sinceCapture.fill(0);
  }

  /**
   * Checkpoint `checkpoint`, which carried writes to this disk or not (`carried`), is held by a
   * standby whose image is a replica: the log from now on only needs what was written after its
   * capture. `base` moves to it only if it carried writes (or epochs went unacknowledged): a
   * standby's record names the last checkpoint that changed its disk, and after a checkpoint
   * that carried nothing, "written since its capture" and "since the last one that carried
   * something" are the same blocks.
   */
  acknowledged(checkpoint: number, carried: boolean): void {
    if (checkpoint !== this.#captured) return;
    if (carried || this.#gap) this.#base = checkpoint;
    this.#gap = false;
    this.#last = checkpoint;
    this.#writeHeader(); // first: the old, larger bitmap is a superset for the new base too
    this.#bits.set(this.#sinceCapture);
    this.#file.write(BITMAP_OFFSET, this.#bits);
  }

  /** The blocks changed since `base`, as byte ranges of the disk (merged, ascending). */
  changedRanges(): DiskRange[] {
    const ranges: DiskRange[] = [];
    const blocks = Math.ceil(this.diskSize / this.blockSize);
    for (let block = 0; block < blocks; block++) {
      if ((this.#bits[block >>> 3] & (1 << (block & 7))) === 0) continue;
      const offset = block * this.blockSize;
      const end = Math.min(this.diskSize, offset + this.blockSize);
      const previous = ranges[ranges.length - 1];
      if (previous !== undefined && previous.offset + previous.length === offset) previous.length = end - previous.offset;
      else ranges.push({ offset, length: end - offset });
    }
    return ranges;
  }

  /** Makes the log durable (before the image is flushed, so a flushed write is always logged). */
  sync(): void {
    this.#file.sync();
  }

  /** Syncs and closes the file. */
  close(): void {
    this.#file.sync();
    this.#file.close();
  }

  #writeHeader(): void {
    const header = new Uint8Array(HEADER_USED);
    const view = new DataView(header.buffer);
    header.set(MAGIC, H_MAGIC);
    view.setUint32(H_VERSION, VERSION, true);
    view.setUint32(H_BLOCK_SIZE, this.blockSize, true);
    setU64(view, H_DISK_SIZE, this.diskSize);
    setU64(view, H_BASE, this.#base);
    setU64(view, H_LAST, this.#last);
    header.set(this.lineage, H_LINEAGE);
    view.setUint32(H_CRC, crc32(header.subarray(0, H_CRC)), true);
    this.#file.write(0, header);
  }
}

/**
 * The primary's image with its change log: every write, zeroing and discard is marked in the
 * log before it reaches the image, and a flush syncs the log before the image. Give this disk
 * to the machine; replication finds the log through it.
 */
export class ChangeLoggedDisk extends DiskBase {
  readonly format: string;
  readonly size: number;
  readonly readOnly: boolean;
  readonly backing: Disk | null;
  /** The image underneath (owned: closed on close). */
  readonly inner: Disk;
  /** Its change log (owned: closed on close). */
  readonly log: ChangeLog;

  constructor(inner: Disk, log: ChangeLog) {
    super();
    if (log.diskSize !== inner.size) {
      throw new TandemError(ErrorCode.BadArgument, `a change log for ${log.diskSize} bytes cannot log a disk of ${inner.size}`);
    }
    this.inner = inner;
    this.log = log;
    this.format = inner.format;
    this.size = inner.size;
    this.readOnly = inner.readOnly;
    this.backing = inner.backing;
  }

  protected doRead(offset: number, target: Uint8Array): void {
    this.inner.readInto(offset, target);
  }
  protected doWrite(offset: number, data: Uint8Array): void {
    this.log.mark(offset, data.length);
    this.inner.write(offset, data);
  }
  protected doWriteZeroes(offset: number, length: number): void {
    this.log.mark(offset, length);
    this.inner.writeZeroes(offset, length);
  }
  protected doDiscard(offset: number, length: number): void {
    this.log.mark(offset, length);
    this.inner.discard(offset, length);
  }
  protected doFlush(): void {
    this.log.sync();
    this.inner.flush();
  }
  protected doMap(offset: number, length: number): DiskExtent[] {
    return this.inner.map(offset, length);
  }
  protected doClose(): void {
    try {
      this.inner.close();
    } finally {
      this.log.close();
    }
  }
  info(): DiskInfo {
    return this.inner.info();
  }
}

function setU64(view: DataView, at: number, value: number): void {
  view.setUint32(at, value >>> 0, true);
  view.setUint32(at + 4, Math.floor(value / 2 ** 32), true);
}

function getU64(view: DataView, at: number): number {
  return view.getUint32(at + 4, true) * 2 ** 32 + view.getUint32(at, true);
}
