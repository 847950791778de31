/**
 * The standby's disks (docs/replication.md, "Disks"). Each is an image file of its own with a
 * record beside it ({@link DiskRecordFile}) and a journal (host/disk/batch-journal.ts):
 *
 * - a checkpoint's writes go through the journal, all or nothing, and the record names the
 *   checkpoint the image holds; a standby killed at any moment restarts holding exactly the old
 *   or the new checkpoint's disk, and its record says which;
 * - a background copy (full, overlay, or the changes since a checkpoint it holds) writes its
 *   blocks straight into the image; until a checkpoint is applied after the copy completed, the
 *   record says the image is not a replica, and the standby does not take over.
 */

import { ErrorCode, TandemError } from "../errors.ts";
import { applyBatch, recoverJournal, type RecoveryReport } from "../disk/batch-journal.ts";
import type { Disk } from "../disk/disk.ts";
import { openDisk } from "../disk/registry.ts";
import type { DiskBatch } from "../disk/write-tracker.ts";
import type { MachineDisk } from "../machine/machine.ts";
import { DiskSyncMode, type StreamRecord } from "../protocol/stream/format.ts";
import { baseIdentityOf } from "./base-identity.ts";
import { DiskRecordFile, DiskRecordState, IDENTITY_BYTES, recordPath, type DiskRecord } from "./disk-record.ts";

/** The path of the journal of the image at `imagePath`. */
export function journalPath(imagePath: string): string {
  return `${imagePath}.tandem-journal`;
}

/** Options of {@link DiskReplica.open}. */
export interface DiskReplicaOptions {
  /** The image's format (probed when absent). */
  format?: string;
  /** Open the image read-only (every copy and checkpoint is then refused with E_DISK_READ_ONLY). */
  readOnly?: boolean;
  /** The guest's identity, recorded with the checkpoint (zeros when the machine has none). */
  identity?: Uint8Array;
}

/** A standby's image, its record and its journal. */
export class DiskReplica {
  /** The image: give it to the standby's machine as its disk. */
  readonly disk: Disk;
  /** The image's path. */
  readonly path: string;
  /** What recovering the journal found at open. */
  readonly recovery: RecoveryReport;
  readonly #record: DiskRecordFile;
  readonly #journal: string;
  readonly #identity: Uint8Array;

  private constructor(path: string, disk: Disk, record: DiskRecordFile, recovery: RecoveryReport, identity: Uint8Array) {
    this.path = path;
    this.disk = disk;
    this.#record = record;
    this.#journal = journalPath(path);
    this.recovery = recovery;
    this.#identity = identity;
  }

  /**
   * Opens the image at `path`, finishes or drops a checkpoint a crash interrupted (its journal),
   * and settles the record on what the image now holds.
   */
  static open(path: string, options: DiskReplicaOptions = {}): DiskReplica {
    const disk = openDisk(path, { format: options.format, readOnly: options.readOnly });
    try {
      return DiskReplica.attach(path, disk, options);
    } catch (error) {
      disk.close();
      throw error;
    }
  }

  /**
   * As {@link open}, for the image at `path` already opened as `disk` (which the replica owns from
   * now on, and closes on close, unless this throws).
   */
  static attach(path: string, disk: Disk, options: Omit<DiskReplicaOptions, "format"> = {}): DiskReplica {
    const identity = options.identity ?? new Uint8Array(IDENTITY_BYTES);
    if (identity.length !== IDENTITY_BYTES) throw new TandemError(ErrorCode.BadArgument, `a guest identity is ${IDENTITY_BYTES} bytes, not ${identity.length}`);
    const readOnly = options.readOnly === true || disk.readOnly;
    let record: DiskRecordFile | undefined;
    try {
      record = DiskRecordFile.open(recordPath(path), disk.size, { readOnly: readOnly });
      const recovery = readOnly ? { outcome: "none" as const, records: 0 } : recoverJournal(disk, journalPath(path));
      const held = record.record;
      if (held.applying !== 0 && !readOnly) {
        // The journal decides: replayed, the image holds the checkpoint being applied.
        const replayed = recovery.outcome === "replayed";
        const settled: DiskRecord = { ...held, applying: 0, applyingGeneration: 0 };
        if (replayed && held.state === DiskRecordState.Replica) {
          settled.checkpoint = held.applying;
          settled.generation = held.applyingGeneration;
        }
        record.write(settled);
      }
      if (held.diskSize !== disk.size && held.state !== DiskRecordState.Unknown && !readOnly) {
        record.write({ ...record.record, state: DiskRecordState.Unknown }); // resized since: nothing recorded holds
      }
      return new DiskReplica(path, disk, record, recovery, identity.slice());
    } catch (error) {
      record?.close();
      throw error;
    }
  }

  /** What the record says the image holds (a copy). */
  get record(): DiskRecord {
    return this.#record.record;
  }

  /** Records that the image now runs as a primary's: it is nobody's copy any more. */
  tookOver(): void {
    if (!this.disk.readOnly) this.#record.write({ ...this.#record.record, state: DiskRecordState.TookOver });
  }

  /** Flushes and closes the image and its record. */
  close(): void {
    try {
      this.disk.close();
    } finally {
      this.#record.close();
    }
  }

  /** @internal {@link StandbyDisks} writes the record through this. */
  writeRecord(record: DiskRecord): void {
    this.#record.write(record);
  }

  /** @internal The identity recorded with checkpoints. */
  get identity(): Uint8Array {
    return this.#identity;
  }

  /** @internal The journal's path. */
  get journal(): string {
    return this.#journal;
  }
}

/** How far a disk's background copy has come. */
export interface DiskCopyProgress {
  /** The copy's mode, or undefined when no copy started in this session. */
  mode?: "full" | "overlay" | "changes";
  /** True once the primary said the copy is complete. */
  copied: boolean;
  /** Bytes of copy applied (data and zeroed ranges). */
  bytes: number;
}

/** Per disk, what this session knows. */
interface DiskState {
  readonly machineDisk: MachineDisk;
  readonly replica: DiskReplica | undefined;
  /** The image equals the primary's as of the last checkpoint applied. */
  replica_: boolean;
  progress: DiskCopyProgress;
}

/**
 * A standby's disks in one session: applies background copies and checkpoints' disk writes,
 * and knows whether the pair is protected (every disk a replica as of the last checkpoint).
 * Disks without a {@link DiskReplica} (a machine's in-memory disks) are written directly,
 * without journal or record.
 */
export class StandbyDisks {
  readonly #disks: DiskState[];

  constructor(disks: readonly MachineDisk[], replicas: readonly (DiskReplica | undefined)[] = []) {
    if (replicas.length > disks.length) {
      throw new TandemError(ErrorCode.BadArgument, `${replicas.length} disk replicas for a machine with ${disks.length} disks`);
    }
    this.#disks = disks.map((machineDisk, i) => {
      const replica = replicas[i];
      if (replica !== undefined && replica.disk !== machineDisk) {
        throw new TandemError(ErrorCode.BadArgument, `disk replica ${i} (${replica.path}) is not the machine's disk ${i}: give the machine the replica's disk`);
      }
      return { machineDisk, replica, replica_: false, progress: { copied: false, bytes: 0 } };
    });
  }

  /** True when every disk equals the primary's as of the last applied checkpoint: a takeover keeps the guest's disks. */
  get protected(): boolean {
    return this.#disks.every((d) => d.replica_);
  }

  /** Per disk, how far its copy came. */
  progress(): DiskCopyProgress[] {
    return this.#disks.map((d) => ({ ...d.progress }));
  }

  /** Why the pair is not protected, for the message of a refused takeover. */
  whyNotProtected(): string {
    const reasons = this.#disks.flatMap((d, i) => {
      if (d.replica_) return [];
      if (d.progress.mode === undefined) return [`disk ${i}: no copy was started`];
      if (!d.progress.copied) return [`disk ${i}: the ${d.progress.mode} copy had ${mib(d.progress.bytes)} applied and was not complete`];
      return [`disk ${i}: copied, but no checkpoint was applied after the copy`];
    });
    return reasons.join("; ");
  }

  /** Applies a background-copy transaction (records of DISK_SYNC_* types only). */
  applySync(records: readonly StreamRecord[]): void {
    for (const record of records) {
      switch (record.type) {
        case "disk-sync-begin":
          this.#begin(record);
          break;
        case "disk-sync-writes": {
          const d = this.#copying(record.disk);
          for (const { offset, data } of record.writes) checkRange(d.machineDisk, record.disk, offset, data.length);
          for (const { offset, data } of record.writes) {
            d.machineDisk.write(offset, data);
            d.progress.bytes += data.length;
          }
          break;
        }
        case "disk-sync-zeroes": {
          const d = this.#copying(record.disk);
          for (const { offset, length } of record.ranges) checkRange(d.machineDisk, record.disk, offset, length);
          for (const { offset, length } of record.ranges) {
            zeroRange(d.machineDisk, offset, length);
            d.progress.bytes += length;
          }
          break;
        }
        case "disk-sync-done": {
          const d = this.#copying(record.disk);
          d.replica?.disk.flush();
          d.progress.copied = true;
          break;
        }
        default:
          throw new TandemError(ErrorCode.StreamFormat, `${record.type.toUpperCase()} inside a disk copy`);
      }
    }
  }

  /**
   * Applies one checkpoint's disk writes (by disk), all or nothing per disk, durably: when it
   * returns, a crash leaves every disk holding this checkpoint. Call it before changing RAM: if
   * it throws, the checkpoint must be refused.
   */
  applyCheckpoint(writes: ReadonlyMap<number, { offset: number; data: Uint8Array }[]>, checkpoint: number, generation: number): void {
    for (const index of writes.keys()) this.#disk(index);
    this.#disks.forEach((d, index) => {
      const batch: DiskBatch = writesToBatch(writes.get(index) ?? []);
      const becomesReplica = d.replica_ || d.progress.copied;
      if (d.replica === undefined) {
        for (const record of batch) if ("data" in record) d.machineDisk.write(record.offset, record.data);
        d.replica_ = becomesReplica;
        return;
      }
      const replica = d.replica;
      const held = replica.record;
      const after: DiskRecord = {
        ...held,
        state: becomesReplica ? DiskRecordState.Replica : held.state,
        checkpoint: becomesReplica ? checkpoint : held.checkpoint,
        generation: becomesReplica ? generation : held.generation,
        applying: 0,
        applyingGeneration: 0,
        identity: replica.identity,
      };
      if (batch.length === 0) {
        // Nothing to write: the record changes only when the image becomes a replica now.
        if (!d.replica_ && becomesReplica) replica.writeRecord(after);
      } else {
        replica.writeRecord({ ...held, applying: checkpoint, applyingGeneration: generation });
        applyBatch(replica.disk, batch, { journal: replica.journal, beforeRelease: () => replica.writeRecord(after) });
      }
      d.replica_ = becomesReplica;
    });
  }

  /** The standby took over: its images are nobody's copies any more. */
  tookOver(): void {
    for (const d of this.#disks) d.replica?.tookOver();
  }

  #disk(index: number): DiskState {
    const d = this.#disks[index];
    if (d === undefined) throw new TandemError(ErrorCode.StreamFormat, `disk ${index}; the machine has ${this.#disks.length}`);
    return d;
  }

  #copying(index: number): DiskState {
    const d = this.#disk(index);
    if (d.progress.mode === undefined) throw new TandemError(ErrorCode.StreamFormat, `copy blocks for disk ${index} before its DISK_SYNC_BEGIN`);
    return d;
  }

  #begin(begin: Extract<StreamRecord, { type: "disk-sync-begin" }>): void {
    const d = this.#disk(begin.disk);
    if (begin.diskSize !== d.machineDisk.size) {
      throw new TandemError(ErrorCode.Refused, `disk ${begin.disk}: the primary's is ${begin.diskSize} bytes, this one ${d.machineDisk.size}`);
    }
    const replica = d.replica;
    const held = replica?.record;
    const mode = begin.mode === DiskSyncMode.Full ? "full" : begin.mode === DiskSyncMode.Overlay ? "overlay" : "changes";
    if (replica !== undefined && held !== undefined) {
      if (replica.disk.readOnly) throw new TandemError(ErrorCode.DiskReadOnly, `${replica.path} is read-only: it cannot take a copy`);
      if (begin.mode === DiskSyncMode.Changes) {
        const sameImage = sameBytes(held.lineage, begin.lineage) && sameBytes(held.identity, replica.identity);
        const holds = held.state === DiskRecordState.Replica || held.state === DiskRecordState.CatchingUp;
        if (!sameImage || !holds || held.checkpoint < begin.since) {
          throw new TandemError(ErrorCode.Refused, `${replica.path} does not hold checkpoint ${begin.since} or later of that image (${describeRecord(held)})`);
        }
        replica.writeRecord({ ...held, state: DiskRecordState.CatchingUp, applying: 0, applyingGeneration: 0 });
      } else {
        if (begin.mode === DiskSyncMode.Overlay) checkOverlay(replica, begin.baseSize, begin.baseIdentity);
        replica.writeRecord({
          ...held, state: DiskRecordState.Copying, lineage: begin.lineage.slice(), checkpoint: 0, generation: 0, applying: 0,
          applyingGeneration: 0, identity: replica.identity,
        });
      }
    } else if (begin.mode !== DiskSyncMode.Full) {
      throw new TandemError(ErrorCode.Refused, `disk ${begin.disk} has no image record: only a full copy will do`);
    }
    d.replica_ = false;
    d.progress = { mode, copied: false, bytes: 0 };
  }
}

/** What a record says, in words. */
export function describeRecord(record: DiskRecord): string {
  switch (record.state) {
    case DiskRecordState.Unknown:
      return "nothing recorded";
    case DiskRecordState.Copying:
      return "a copy was interrupted";
    case DiskRecordState.CatchingUp:
      return `catching up from checkpoint ${record.checkpoint} (generation ${record.generation})`;
    case DiskRecordState.Replica:
      return `checkpoint ${record.checkpoint} (generation ${record.generation})`;
    case DiskRecordState.TookOver:
      return `took over after checkpoint ${record.checkpoint} (generation ${record.generation}) and ran since`;
  }
}

/** An overlay copy needs the same base below (identity and size) and nothing of its own yet. */
function checkOverlay(replica: DiskReplica, baseSize: number, baseIdentity: Uint8Array): void {
  const base = replica.disk.backing;
  if (base === null) throw new TandemError(ErrorCode.Refused, `${replica.path} has no backing file: an overlay copy needs the same base on both sides`);
  const mine = baseIdentityOf(base);
  if (base.size !== baseSize || !sameBytes(mine, baseIdentity)) {
    throw new TandemError(ErrorCode.Refused, `${replica.path}'s base is not the primary's (identity or size differ)`);
  }
  const own = replica.disk.map(0, replica.disk.size).filter((e) => e.present && e.depth === 0);
  if (own.length > 0) throw new TandemError(ErrorCode.Refused, `${replica.path} already holds data of its own above its base: it needs a full copy`);
}

/** Makes a range read as zeros, skipping what already does (so a copy into a new image stays sparse). */
function zeroRange(disk: MachineDisk, offset: number, length: number): void {
  const image = disk as Partial<Disk>;
  if (typeof image.map === "function" && typeof image.writeZeroes === "function") {
    for (const extent of image.map(offset, length)) {
      if (!extent.zero) image.writeZeroes(extent.offset, extent.length);
    }
    return;
  }
  const zeros = new Uint8Array(Math.min(length, 1 << 20));
  for (let at = offset; at < offset + length; at += zeros.length) disk.write(at, zeros.subarray(0, Math.min(zeros.length, offset + length - at)));
}

function writesToBatch(writes: readonly { offset: number; data: Uint8Array }[]): DiskBatch {
  return writes.map((w) => ({ offset: w.offset, data: w.data }));
}

function checkRange(disk: MachineDisk, index: number, offset: number, length: number): void {
  if (offset + length > disk.size) {
    throw new TandemError(ErrorCode.StreamFormat, `${length} bytes at ${offset} pass the end of disk ${index} (${disk.size} bytes)`);
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}
