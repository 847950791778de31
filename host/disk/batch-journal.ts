/**
 * All-or-nothing application of a disk batch on a standby (docs/disk-checkpoints.md): the batch
 * goes to a journal file first, which is synced, then onto the disk, which is flushed, and only
 * then is the journal emptied. A crash anywhere leaves either a complete journal (replayed on
 * recovery: the disk gets all of the batch) or an incomplete one (discarded: the disk was not
 * touched yet, and keeps none of it). Replay is idempotent, so a crash during replay is
 * recovered the same way.
 */

import { existsSync } from "node:fs";
import { dirname } from "node:path";
import { ErrorCode, TandemError } from "../errors.ts";
import { FileBlockFile, readExact, syncDirectory, type BlockFile } from "./block-file.ts";
import { crc32 } from "./crc32.ts";
import type { Disk } from "./disk.ts";
import type { DiskBatch } from "./write-tracker.ts";

// The journal, byte by byte (docs/disk-checkpoints.md, "Journal format"); integers little-endian.
/** Identifies a tandem disk journal: ASCII "TNDMJRNL". */
const MAGIC = Uint8Array.from([0x54, 0x4e, 0x44, 0x4d, 0x4a, 0x52, 0x4e, 0x4c]);
/** The only journal version this tandem writes and reads. */
export const JOURNAL_VERSION = 1;
/** Header: magic, 8 bytes. */
const HEADER_MAGIC = 0;
/** Header: version, u32. */
const HEADER_VERSION = 8;
/** Header: number of records, u32. */
const HEADER_RECORD_COUNT = 12;
/** Header: size in bytes of the disk the batch was taken from, u64. */
const HEADER_DISK_SIZE = 16;
/** Header: bytes of records between the header and the trailer, u64. */
const HEADER_BODY_BYTES = 24;
/** Header: total bytes. */
const HEADER_BYTES = 32;
/** Record header: byte offset in the disk, u64. */
const RECORD_OFFSET = 0;
/** Record header: bytes the record covers, u64. */
const RECORD_LENGTH = 8;
/** Record header: flags, u32 ({@link FLAG_ZERO}; other bits must be 0). */
const RECORD_FLAGS = 16;
/** Record header: reserved u32, must be 0. */
const RECORD_RESERVED = 20;
/** Record header: total bytes; `length` data bytes follow unless the record is a zero record. */
const RECORD_HEADER_BYTES = 24;
/** Record flag: the range reads as zeros and no data follows. */
const FLAG_ZERO = 1;
/** Trailer: CRC-32 (zlib's: reflected polynomial 0xEDB88320) of every byte before it, u32. */
const TRAILER_BYTES = 4;

/** The journal is written and read in pieces of this size, so its size never dictates memory. */
const CHUNK_BYTES = 1 << 20;
/** A u32 record count. */
const MAX_RECORDS = 0xffffffff;

/** What {@link applyBatch} did. */
export interface ApplyReport {
  /** Records applied. */
  records: number;
  /** Bytes of data written. */
  dataBytes: number;
  /** Bytes zeroed. */
  zeroBytes: number;
}

/** What {@link recoverJournal} found and did. */
export interface RecoveryReport {
  /**
   * none: no journal, or an empty one (the last batch completed);
   * replayed: a complete journal, applied again (the disk now has all of that batch);
   * discarded: an incomplete journal (torn by a crash before it was synced), emptied: the disk
   * was never touched by that batch.
   */
  outcome: "none" | "replayed" | "discarded";
  /** Records replayed (0 unless replayed). */
  records: number;
  /** Why the journal was discarded. */
  reason?: string;
}

/** Options of {@link applyBatch}. */
export interface ApplyBatchOptions {
  /** The journal: a path (created if absent) or an open {@link BlockFile}, which stays the caller's. */
  journal: string | BlockFile;
  /**
   * Called once the batch is on the disk and flushed, before the journal is emptied: the place to
   * record durably that the disk now holds the batch. A crash before it returns leaves the
   * journal whole, so recovery replays the batch: what the caller recorded is never ahead of, nor
   * behind, what recovery leaves. If it throws, the journal stays whole and the error propagates.
   */
  beforeRelease?: () => void;
}

/**
 * Applies `batch` to `disk` all or nothing: a crash part-way leaves a journal from which
 * {@link recoverJournal} (run before the disk is used again) finishes the batch or drops it whole.
 * The journal must be empty (a previous batch completed or was recovered). An empty batch does nothing.
 */
export function applyBatch(disk: Disk, batch: DiskBatch, options: ApplyBatchOptions): ApplyReport {
  const report = checkBatch(disk, batch);
  if (batch.length === 0) return report;
  withJournal(options.journal, true, (journal) => {
    if (journal.size() !== 0) {
      throw new TandemError(
        ErrorCode.InvalidState,
        `journal ${journal.path} holds a batch that was not recovered: call recoverJournal on it before applying another`,
      );
    }
    writeJournal(journal, batch, disk.size);
    journal.sync();
    for (const record of batch) {
      if ("zero" in record) disk.writeZeroes(record.offset, record.length);
      else disk.write(record.offset, record.data);
    }
    disk.flush();
    options.beforeRelease?.();
    journal.truncate(0);
    journal.sync();
  });
  return report;
}

/**
 * Finishes or drops a batch a crash interrupted: call it on `disk` with its journal before
 * using the disk. A journal with a valid checksum is replayed; one with a bad checksum or cut
 * short is discarded. A journal whose checksum holds but whose contents are not valid for this
 * disk fails with E_DISK_FORMAT (E_DISK_UNSUPPORTED for a later version) and is left as it is.
 */
export function recoverJournal(disk: Disk, journal: string | BlockFile): RecoveryReport {
  if (typeof journal === "string" && !existsSync(journal)) return { outcome: "none", records: 0 };
  return withJournal(journal, false, (file) => {
    const size = file.size();
    if (size === 0) return { outcome: "none", records: 0 };
    checkMagicOrTorn(file, size);
    if (size < HEADER_BYTES + TRAILER_BYTES) return discard(file, `it is ${size} bytes, shorter than a journal's header and trailer`);
    const stored = new Uint8Array(TRAILER_BYTES);
    readExact(file, size - TRAILER_BYTES, stored, "journal trailer");
    const expected = new DataView(stored.buffer).getUint32(0, true);
    const actual = checksum(file, size - TRAILER_BYTES);
    if (actual !== expected) return discard(file, `its checksum ${hex(actual)} is not the stored ${hex(expected)}: a write was torn`);
    const records = validateJournal(file, size, disk);
    if (disk.readOnly) throw new TandemError(ErrorCode.DiskReadOnly, `journal ${file.path} must be replayed, but the ${disk.format} disk is read-only`);
    replay(file, disk);
    disk.flush();
    file.truncate(0);
    file.sync();
    return { outcome: "replayed", records };
  });
}

function checkBatch(disk: Disk, batch: DiskBatch): ApplyReport {
  if (!Array.isArray(batch)) throw new TandemError(ErrorCode.BadArgument, "a disk batch must be an array of records");
  if (batch.length > MAX_RECORDS) throw new TandemError(ErrorCode.BadArgument, `a disk batch holds at most ${MAX_RECORDS} records, not ${batch.length}`);
  if (batch.length > 0 && disk.readOnly) throw new TandemError(ErrorCode.DiskReadOnly, `cannot apply a batch to the read-only ${disk.format} disk`);
  const report: ApplyReport = { records: batch.length, dataBytes: 0, zeroBytes: 0 };
  batch.forEach((record, i) => {
    const zero = "zero" in record;
    if (zero ? record.zero !== true : !(record.data instanceof Uint8Array)) {
      throw new TandemError(ErrorCode.BadArgument, `batch record ${i} is neither {offset, data: Uint8Array} nor {offset, length, zero: true}`);
    }
    const length = zero ? record.length : record.data.length;
    const { offset } = record;
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > disk.size) {
      throw new TandemError(ErrorCode.OutOfRange, `batch record ${i} (${length} bytes at ${offset}) is outside the ${disk.size}-byte disk`);
    }
    if (zero) report.zeroBytes += length;
    else report.dataBytes += length;
  });
  return report;
}

/** Opens the journal if given by path (creating it when `create`), runs `use`, closes what it opened. */
function withJournal<T>(journal: string | BlockFile, create: boolean, use: (file: BlockFile) => T): T {
  if (typeof journal !== "string") return use(journal);
  let file: FileBlockFile;
  if (existsSync(journal) || !create) {
    file = FileBlockFile.open(journal);
  } else {
    file = FileBlockFile.open(journal, { create: true });
    // The journal's name must survive a crash as surely as its bytes, or a crash mid-apply
    // could lose the journal with the disk half written.
    syncDirectory(dirname(journal));
  }
  try {
    return use(file);
  } finally {
    file.close();
  }
}


/** Writes the whole journal of `batch` from offset 0, through a staging buffer, checksumming as it goes. */
function writeJournal(file: BlockFile, batch: DiskBatch, diskSize: number): void {
  const staging = new Uint8Array(CHUNK_BYTES);
  const view = new DataView(staging.buffer);
  let used = 0;
  let at = 0;
  let crc = 0;
  const emit = (bytes: Uint8Array) => {
    file.write(at, bytes);
    crc = crc32(bytes, crc);
    at += bytes.length;
  };
  const drain = () => {
    if (used > 0) emit(staging.subarray(0, used));
    used = 0;
  };
  let body = 0;
  for (const record of batch) body += RECORD_HEADER_BYTES + ("zero" in record ? 0 : record.data.length);
  MAGIC.forEach((b, i) => (staging[HEADER_MAGIC + i] = b));
  view.setUint32(HEADER_VERSION, JOURNAL_VERSION, true);
  view.setUint32(HEADER_RECORD_COUNT, batch.length, true);
  view.setBigUint64(HEADER_DISK_SIZE, BigInt(diskSize), true);
  view.setBigUint64(HEADER_BODY_BYTES, BigInt(body), true);
  used = HEADER_BYTES;
  for (const record of batch) {
    if (used + RECORD_HEADER_BYTES > staging.length) drain();
    const zero = "zero" in record;
    view.setBigUint64(used + RECORD_OFFSET, BigInt(record.offset), true);
    view.setBigUint64(used + RECORD_LENGTH, BigInt(zero ? record.length : record.data.length), true);
    view.setUint32(used + RECORD_FLAGS, zero ? FLAG_ZERO : 0, true);
    view.setUint32(used + RECORD_RESERVED, 0, true);
    used += RECORD_HEADER_BYTES;
    if (zero) continue;
    if (used + record.data.length <= staging.length) {
      staging.set(record.data, used);
      used += record.data.length;
    } else {
      drain();
      emit(record.data);
    }
  }
  if (used + TRAILER_BYTES > staging.length) drain();
  view.setUint32(used, crc32(staging.subarray(0, used), crc), true);
  used += TRAILER_BYTES;
  file.write(at, staging.subarray(0, used));
}

/**
 * A journal starts with the magic, or with zeros where a crash lost the header's write. Anything
 * else is not a journal (a wrong path?): refuse it rather than empty someone's file.
 */
function checkMagicOrTorn(file: BlockFile, size: number): void {
  const head = new Uint8Array(Math.min(size, MAGIC.length));
  readExact(file, 0, head, "journal magic");
  if (head.some((b, i) => b !== 0 && b !== MAGIC[i])) {
    throw new TandemError(ErrorCode.DiskFormat, `${file.path} is not a tandem disk journal (no TNDMJRNL magic): pass the journal's path, or move this file away`);
  }
}

function discard(file: BlockFile, reason: string): RecoveryReport {
  file.truncate(0);
  file.sync();
  return { outcome: "discarded", records: 0, reason: `journal ${file.path} discarded: ${reason}` };
}

/** CRC-32 of the file's first `length` bytes, read a chunk at a time. */
function checksum(file: BlockFile, length: number): number {
  const chunk = new Uint8Array(Math.min(CHUNK_BYTES, length));
  let crc = 0;
  for (let at = 0; at < length; at += chunk.length) {
    const piece = chunk.subarray(0, Math.min(chunk.length, length - at));
    readExact(file, at, piece, "journal body");
    crc = crc32(piece, crc);
  }
  return crc;
}

/** Checks a checksummed journal's header and every record header against the file and `disk`; returns the record count. */
function validateJournal(file: BlockFile, size: number, disk: Disk): number {
  const bad = (what: string) =>
    new TandemError(ErrorCode.DiskFormat, `journal ${file.path} has a valid checksum but ${what}; it was left as it is: check it belongs to this disk`);
  const header = new Uint8Array(HEADER_BYTES);
  readExact(file, 0, header, "journal header");
  const view = new DataView(header.buffer);
  if (!MAGIC.every((b, i) => header[HEADER_MAGIC + i] === b)) throw bad("no magic");
  const version = view.getUint32(HEADER_VERSION, true);
  if (version !== JOURNAL_VERSION) {
    throw new TandemError(ErrorCode.DiskUnsupported, `journal ${file.path} is version ${version}; this tandem reads version ${JOURNAL_VERSION} only: recover it with the tandem that wrote it`);
  }
  const count = view.getUint32(HEADER_RECORD_COUNT, true);
  const diskSize = view.getBigUint64(HEADER_DISK_SIZE, true);
  const body = view.getBigUint64(HEADER_BODY_BYTES, true);
  if (diskSize !== BigInt(disk.size)) throw bad(`was written for a disk of ${diskSize} bytes, not this ${disk.size}-byte one`);
  if (body !== BigInt(size - HEADER_BYTES - TRAILER_BYTES)) throw bad(`says its records take ${body} bytes where the file holds ${size - HEADER_BYTES - TRAILER_BYTES}`);
  const end = size - TRAILER_BYTES;
  const at = forEachRecord(file, count, end, bad, (offset, length) => {
    if (offset + length > disk.size) throw bad(`a record of ${length} bytes at ${offset} passes the end of the disk`);
  });
  if (at !== end) throw bad(`its ${count} records end at byte ${at}, not at the trailer (${end})`);
  return count;
}

/** Applies every record of a validated journal to `disk`, reading data a chunk at a time. */
function replay(file: BlockFile, disk: Disk): void {
  const size = file.size();
  const header = new Uint8Array(HEADER_BYTES);
  readExact(file, 0, header, "journal header");
  const count = new DataView(header.buffer).getUint32(HEADER_RECORD_COUNT, true);
  const chunk = new Uint8Array(CHUNK_BYTES);
  const bad = (what: string) => new TandemError(ErrorCode.DiskFormat, `journal ${file.path} changed during replay: ${what}`);
  forEachRecord(file, count, size - TRAILER_BYTES, bad, (offset, length, zero, dataAt) => {
    if (zero) {
      disk.writeZeroes(offset, length);
      return;
    }
    for (let done = 0; done < length; done += CHUNK_BYTES) {
      const piece = chunk.subarray(0, Math.min(CHUNK_BYTES, length - done));
      readExact(file, dataAt + done, piece, "journal record data");
      disk.write(offset + done, piece);
    }
  });
}

/**
 * Walks `count` record headers from the end of the journal header, each checked to lie (with its
 * data) before `end`; `visit` gets the record and where its data starts. Returns where the records end.
 */
function forEachRecord(
  file: BlockFile,
  count: number,
  end: number,
  bad: (what: string) => TandemError,
  visit: (offset: number, length: number, zero: boolean, dataAt: number) => void,
): number {
  const bytes = new Uint8Array(RECORD_HEADER_BYTES);
  const view = new DataView(bytes.buffer);
  let at = HEADER_BYTES;
  for (let i = 0; i < count; i++) {
    if (at + RECORD_HEADER_BYTES > end) throw bad(`record ${i} of ${count} starts past its records' end`);
    readExact(file, at, bytes, `journal record ${i}`);
    const offset = view.getBigUint64(RECORD_OFFSET, true);
    const length = view.getBigUint64(RECORD_LENGTH, true);
    const flags = view.getUint32(RECORD_FLAGS, true);
    if ((flags & ~FLAG_ZERO) !== 0 || view.getUint32(RECORD_RESERVED, true) !== 0) throw bad(`record ${i} has unknown flags ${hex(flags)} or reserved bits set`);
    if (offset > BigInt(Number.MAX_SAFE_INTEGER) || length > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`record ${i} has offset or length beyond 2^53`);
    const zero = (flags & FLAG_ZERO) !== 0;
    const dataAt = at + RECORD_HEADER_BYTES;
    if (!zero && BigInt(dataAt) + length > BigInt(end)) throw bad(`record ${i}'s ${length} data bytes run past its records' end`);
    visit(Number(offset), Number(length), zero, dataAt);
    at = dataAt + (zero ? 0 : Number(length));
  }
  return at;
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(8, "0")}`;
}
