/**
 * The record a standby keeps beside its image (`IMAGE.tandem-record`): which checkpoint of which
 * primary image the image holds, so a restarted standby knows what it has and can rejoin
 * (docs/replication.md, "Disks"). It is tiny and rewritten often, so it is not renamed into
 * place: the file has two slots, written alternately, each with a sequence number and a CRC-32,
 * as file systems keep two superblocks. A crash tears at most the slot being written; the
 * reader takes the valid slot with the higher sequence number. One write and one sync per update.
 */

import { existsSync } from "node:fs";
import { ErrorCode, TandemError } from "../errors.ts";
import { dirname } from "node:path";
import { FileBlockFile, syncDirectory, type BlockFile } from "../disk/block-file.ts";
import { crc32 } from "../disk/crc32.ts";
import { LINEAGE_BYTES } from "../protocol/stream/format.ts";

/** What the image holds. */
export const DiskRecordState = {
  /** Nothing known: a new or foreign image. Only a full copy makes it a replica. */
  Unknown: 0,
  /** A full or overlay copy was under way: the image is a mix, only a new copy makes it a replica. */
  Copying: 1,
  /**
   * The image held `checkpoint` of `lineage`, and since then only blocks the primary changed after
   * `checkpoint` may have been written (a copy of changes was under way): a copy of the changes
   * since `checkpoint` makes it a replica again.
   */
  CatchingUp: 2,
  /** The image equals the primary's image as of `checkpoint` of `lineage`. */
  Replica: 3,
  /** The image took over and has run as a primary since: it is no copy of anyone's. */
  TookOver: 4,
} as const;
/** One of {@link DiskRecordState}. */
export type DiskRecordState = (typeof DiskRecordState)[keyof typeof DiskRecordState];

/** The record's contents. */
export interface DiskRecord {
  state: DiskRecordState;
  /** The primary image's lineage (its change log's random id); zeros when unknown. */
  lineage: Uint8Array;
  /** The checkpoint held (state Replica), or the one the image was caught up from (CatchingUp). */
  checkpoint: number;
  /** That checkpoint's generation. */
  generation: number;
  /**
   * A checkpoint being applied through the journal, 0 if none: if the journal is replayed after a
   * crash, the image holds this one (see {@link DiskReplica}).
   */
  applying: number;
  /** The generation of `applying`. */
  applyingGeneration: number;
  /** The disk's size in bytes. */
  diskSize: number;
  /** The guest's identity (the hash of its description), zeros when the machine has none. */
  identity: Uint8Array;
}

// One slot, byte by byte (little-endian); the file is two slots, at 0 and SLOT_BYTES.
/** "TNDMDREC". */
const MAGIC = Uint8Array.from([0x54, 0x4e, 0x44, 0x4d, 0x44, 0x52, 0x45, 0x43]);
const VERSION = 1;
const S_MAGIC = 0; // u8[8]
const S_VERSION = 8; // u32
const S_STATE = 12; // u32
const S_SEQUENCE = 16; // u64: which slot is newer
const S_CHECKPOINT = 24; // u64
const S_GENERATION = 32; // u64
const S_APPLYING = 40; // u64
const S_APPLYING_GENERATION = 48; // u64
const S_DISK_SIZE = 56; // u64
const S_LINEAGE = 64; // u8[16]
const S_IDENTITY = 80; // u8[32]
const S_CRC = 112; // u32: CRC-32 of bytes 0..111
const SLOT_USED = 116;
/** A slot fills a sector, so writing one never touches the other's sector. */
const SLOT_BYTES = 512;
/** Bytes of a guest identity. */
export const IDENTITY_BYTES = 32;

/** The path of the record of the image at `imagePath`. */
export function recordPath(imagePath: string): string {
  return `${imagePath}.tandem-record`;
}

/** A record file, open. */
export class DiskRecordFile {
  readonly #file: BlockFile;
  #sequence: number;
  #record: DiskRecord;

  private constructor(file: BlockFile, sequence: number, record: DiskRecord) {
    this.#file = file;
    this.#sequence = sequence;
    this.#record = record;
  }

  /**
   * Opens the record at `path`, creating it (state Unknown) if absent. A file whose slots are
   * both torn or not a record fails with E_DISK_FORMAT (a slot is torn only while being written,
   * so two bad slots mean the file is not ours or was damaged): move it away to start afresh.
   */
  static open(path: string, diskSize: number, options: { readOnly?: boolean } = {}): DiskRecordFile {
    if (!existsSync(path)) {
      if (options.readOnly) return new DiskRecordFile(new MissingFile(path), 0, unknownRecord(diskSize));
      const file = FileBlockFile.open(path, { create: true });
      syncDirectory(dirname(path)); // the name must survive a crash as surely as the bytes
      const created = new DiskRecordFile(file, 0, unknownRecord(diskSize));
      created.write(unknownRecord(diskSize));
      return created;
    }
    const file = FileBlockFile.open(path, { readOnly: options.readOnly });
    try {
      const slots = [readSlot(file, 0), readSlot(file, SLOT_BYTES)];
      const valid = slots.filter((s) => s !== undefined);
      if (valid.length === 0) {
        throw new TandemError(ErrorCode.DiskFormat, `${path} is not a tandem disk record, or both its slots are damaged: move it away to start this image afresh`);
      }
      const newest = valid.reduce((a, b) => (b.sequence > a.sequence ? b : a));
      return new DiskRecordFile(file, newest.sequence, newest.record);
    } catch (error) {
      file.close();
      throw error;
    }
  }

  /** The record as last read or written (a copy). */
  get record(): DiskRecord {
    return { ...this.#record, lineage: this.#record.lineage.slice(), identity: this.#record.identity.slice() };
  }

  /** Writes `record` durably (into the older slot, then sync). */
  write(record: DiskRecord): void {
    const sequence = this.#sequence + 1;
    const slot = encodeSlot(record, sequence);
    this.#file.write((sequence % 2) * SLOT_BYTES, slot);
    this.#file.sync();
    this.#sequence = sequence;
    this.#record = { ...record, lineage: record.lineage.slice(), identity: record.identity.slice() };
  }

  /** Closes the file. */
  close(): void {
    this.#file.close();
  }
}

/** The record of an image nothing is known about. */
export function unknownRecord(diskSize: number): DiskRecord {
  return {
    state: DiskRecordState.Unknown, lineage: new Uint8Array(LINEAGE_BYTES), checkpoint: 0, generation: 0, applying: 0,
    applyingGeneration: 0, diskSize, identity: new Uint8Array(IDENTITY_BYTES),
  };
}

function encodeSlot(record: DiskRecord, sequence: number): Uint8Array {
  if (record.lineage.length !== LINEAGE_BYTES || record.identity.length !== IDENTITY_BYTES) {
    throw new TandemError(ErrorCode.BadArgument, `a disk record needs a ${LINEAGE_BYTES}-byte lineage and a ${IDENTITY_BYTES}-byte identity`);
  }
  const slot = new Uint8Array(SLOT_BYTES);
  const view = new DataView(slot.buffer);
  slot.set(MAGIC, S_MAGIC);
  view.setUint32(S_VERSION, VERSION, true);
  view.setUint32(S_STATE, record.state, true);
  setU64(view, S_SEQUENCE, sequence);
  setU64(view, S_CHECKPOINT, record.checkpoint);
  setU64(view, S_GENERATION, record.generation);
  setU64(view, S_APPLYING, record.applying);
  setU64(view, S_APPLYING_GENERATION, record.applyingGeneration);
  setU64(view, S_DISK_SIZE, record.diskSize);
  slot.set(record.lineage, S_LINEAGE);
  slot.set(record.identity, S_IDENTITY);
  view.setUint32(S_CRC, crc32(slot.subarray(0, S_CRC)), true);
  return slot;
}

/** The slot at `offset`, or undefined if it is absent, torn or not a record. */
function readSlot(file: BlockFile, offset: number): { sequence: number; record: DiskRecord } | undefined {
  const slot = new Uint8Array(SLOT_USED);
  if (file.read(offset, slot) !== SLOT_USED) return undefined;
  const view = new DataView(slot.buffer);
  if (!MAGIC.every((b, i) => slot[S_MAGIC + i] === b)) return undefined;
  if (view.getUint32(S_CRC, true) !== crc32(slot.subarray(0, S_CRC))) return undefined;
  const version = view.getUint32(S_VERSION, true);
  if (version !== VERSION) {
    throw new TandemError(ErrorCode.DiskUnsupported, `${file.path} is a disk record of version ${version}; this tandem reads version ${VERSION}`);
  }
  const state = view.getUint32(S_STATE, true);
  if (!(Object.values(DiskRecordState) as number[]).includes(state)) {
    throw new TandemError(ErrorCode.DiskFormat, `${file.path}: state ${state} is not one this tandem knows`);
  }
  return {
    sequence: getU64(view, S_SEQUENCE),
    record: {
      state: state as DiskRecordState,
      checkpoint: getU64(view, S_CHECKPOINT),
      generation: getU64(view, S_GENERATION),
      applying: getU64(view, S_APPLYING),
      applyingGeneration: getU64(view, S_APPLYING_GENERATION),
      diskSize: getU64(view, S_DISK_SIZE),
      lineage: slot.slice(S_LINEAGE, S_LINEAGE + LINEAGE_BYTES),
      identity: slot.slice(S_IDENTITY, S_IDENTITY + IDENTITY_BYTES),
    },
  };
}

function setU64(view: DataView, at: number, value: number): void {
  view.setUint32(at, value >>> 0, true);
  view.setUint32(at + 4, Math.floor(value / 2 ** 32), true);
}

function getU64(view: DataView, at: number): number {
  return view.getUint32(at + 4, true) * 2 ** 32 + view.getUint32(at, true);
}

/** A record file that does not exist, opened read-only: it reads as Unknown and cannot be written. */
class MissingFile implements BlockFile {
  readonly readOnly = true;
  constructor(readonly path: string) {}
  size(): number {
    return 0;
  }
  read(): number {
    return 0;
  }
  write(): void {
    throw new TandemError(ErrorCode.DiskReadOnly, `${this.path}: the image is read-only, so its record cannot be written`);
  }
  sync(): void {}
  truncate(): void {
    this.write();
  }
  close(): void {}
}
