/**
 * The primary's background disk copy (docs/replication.md, "Disks"), after QEMU's drive-mirror
 * and DRBD's resync: between checkpoints, while the guest runs, it sends what the primary's
 * image holds to the standby, a window of blocks per transaction, so memory stays bounded and
 * the guest is never paused for it.
 *
 * Ordering: a window is read from the image and queued on the same transaction stream as the
 * checkpoints, in one synchronous step. A guest write made before the read is in the window (and
 * in the next checkpoint too); one made after it is in a later checkpoint, which the standby
 * applies after the window. So a checkpoint's writes always land after the copy's older bytes.
 *
 * What is copied, per disk, is chosen by asking the standby (it refuses what it cannot take):
 * the blocks changed since a checkpoint it holds (a rejoin, from the image's {@link ChangeLog}),
 * or only the overlay when both images stand on the same base, or else everything.
 */

import { ErrorCode, TandemError } from "../errors.ts";
import type { Disk, DiskExtent } from "../disk/disk.ts";
import type { DiskRange } from "../disk/write-tracker.ts";
import type { Machine, MachineDisk } from "../machine/machine.ts";
import type { TransactionSender } from "../protocol/sender.ts";
import { BASE_IDENTITY_BYTES, DiskSyncMode, LINEAGE_BYTES } from "../protocol/stream/format.ts";
import type { StreamWriter } from "../protocol/stream/writer.ts";
import { baseIdentityOf } from "./base-identity.ts";
import { ChangeLoggedDisk, type ChangeLog } from "./change-log.ts";
import { sendTransaction } from "./peer-calls.ts";

/** Options of the background copy. */
export interface DiskCopyOptions {
  /** Data bytes per copy transaction: the window. Default 4 MiB. */
  windowBytes?: number;
  /** Copy only the overlay when the standby's image stands on the same base. Default true. */
  overlay?: boolean;
}

/** How a disk's copy is going. */
export interface DiskCopyStatus {
  /** What is being copied. */
  mode: "full" | "overlay" | "changes";
  /** Why this mode (for a full copy: why nothing smaller would do). */
  reason: string;
  /** Bytes sent (data, and ranges sent as zeros). */
  bytes: number;
  /** Bytes to send in all. */
  total: number;
  /** True once the standby was told the copy is complete. */
  done: boolean;
}

const DEFAULT_WINDOW = 4 << 20;
/** Extents are mapped this much of the disk at a time, so a huge disk's map is never held whole. */
const MAP_CHUNK = 64 << 20;
/** The largest single read (and stream entry) of a window. */
const MAX_PIECE = 1 << 20;
/** Zeroed ranges per window: they cost 16 bytes each on the wire. */
const MAX_ZERO_RANGES = 8192;

/**
 * What remains to copy of one disk: a cursor over the disk (full and overlay copies) or a queue
 * of changed ranges (a copy of changes). What a range holds (data, zeros, nothing of the top
 * image's) is looked up when its window is taken, in the same synchronous step as the read: a
 * range that was zero when the copy started and that the guest wrote since must go as data.
 */
class DiskCopy {
  readonly status: DiskCopyStatus;
  readonly #disk: MachineDisk;
  readonly #image: Disk | undefined;
  readonly #classify: (extent: DiskExtent) => "data" | "zero" | "skip";
  #cursor = 0;
  readonly #changes: DiskRange[] | undefined;

  constructor(disk: MachineDisk, mode: DiskCopyStatus["mode"], reason: string, changes?: DiskRange[]) {
    this.#disk = disk;
    this.#image = asImage(disk);
    this.#classify = mode === "overlay" ? classifyOverlay : classifyFull;
    this.#changes = changes?.map((r) => ({ ...r }));
    this.status = { mode, reason, bytes: 0, total: this.#countTotal(), done: false };
  }

  /** True when everything was taken. */
  get exhausted(): boolean {
    return this.#changes !== undefined ? this.#changes.length === 0 : this.#cursor >= this.#disk.size;
  }

  /** Takes the next window: data up to `budget` bytes, read now, and ranges that read as zeros now. */
  take(budget: number): { writes: { offset: number; data: Uint8Array }[]; zeroes: { offset: number; length: number }[] } {
    const writes: { offset: number; data: Uint8Array }[] = [];
    const zeroes: { offset: number; length: number }[] = [];
    const changes = this.#changes;
    if (changes !== undefined) {
      while (budget > 0 && changes.length > 0) {
        const range = changes[0];
        const n = Math.min(range.length, budget, MAX_PIECE);
        writes.push({ offset: range.offset, data: this.#disk.read(range.offset, n) });
        this.status.bytes += n;
        budget -= n;
        range.offset += n;
        range.length -= n;
        if (range.length === 0) changes.shift();
      }
      return { writes, zeroes };
    }
    while (budget > 0 && zeroes.length < MAX_ZERO_RANGES && this.#cursor < this.#disk.size) {
      const span = Math.min(MAP_CHUNK, this.#disk.size - this.#cursor);
      const extents: DiskExtent[] = this.#image?.map(this.#cursor, span) ??
        [{ offset: this.#cursor, length: span, present: true, zero: false, data: true, depth: 0 }];
      for (const extent of extents) {
        const end = extent.offset + extent.length;
        const kind = this.#classify(extent);
        if (kind === "data") {
          const n = Math.min(end - this.#cursor, budget, MAX_PIECE);
          writes.push({ offset: this.#cursor, data: this.#disk.read(this.#cursor, n) });
          this.status.bytes += n;
          budget -= n;
          this.#cursor += n;
          if (this.#cursor < end) break; // the budget or the piece ran out inside this extent: map afresh from here
          continue;
        }
        if (kind === "zero") {
          const last = zeroes[zeroes.length - 1];
          if (last !== undefined && last.offset + last.length === extent.offset) last.length += extent.length;
          else zeroes.push({ offset: extent.offset, length: extent.length });
          this.status.bytes += extent.length;
        }
        this.#cursor = end;
        if (budget <= 0 || zeroes.length >= MAX_ZERO_RANGES) break;
      }
    }
    return { writes, zeroes };
  }

  #countTotal(): number {
    if (this.#changes !== undefined) return this.#changes.reduce((n, r) => n + r.length, 0);
    const image = this.#image;
    if (image === undefined) return this.#disk.size;
    let total = 0;
    for (let at = 0; at < image.size; at += MAP_CHUNK) {
      for (const extent of image.map(at, Math.min(MAP_CHUNK, image.size - at))) if (this.#classify(extent) !== "skip") total += extent.length;
    }
    return total;
  }
}

/** A full copy: what the image holds, through its whole chain; zeros where it reads zeros. */
function classifyFull(extent: DiskExtent): "data" | "zero" | "skip" {
  return extent.zero || !extent.present ? "zero" : "data";
}

/** An overlay copy: only what the top image itself decides; the shared base supplies the rest. */
function classifyOverlay(extent: DiskExtent): "data" | "zero" | "skip" {
  if (extent.depth !== 0 || !extent.present) return "skip";
  return extent.zero ? "zero" : "data";
}

/** The disk as an image with a map, if it is one. */
function asImage(disk: MachineDisk): Disk | undefined {
  const image = disk as Partial<Disk>;
  return typeof image.map === "function" && typeof image.readInto === "function" ? (disk as Disk) : undefined;
}

/** The background copy of all of a machine's disks, driven by the primary's loop. */
export class DiskSync {
  readonly #machine: Machine;
  readonly #writer: StreamWriter;
  readonly #windowBytes: number;
  readonly #overlay: boolean;
  #copies: DiskCopy[] = [];
  /** The checkpoint after which the standby holds every disk whole, or 0 before. */
  #protectedFrom = 0;
  #doneAtCheckpoint = -1;

  constructor(machine: Machine, writer: StreamWriter, options: DiskCopyOptions = {}) {
    const windowBytes = options.windowBytes ?? DEFAULT_WINDOW;
    if (!Number.isSafeInteger(windowBytes) || windowBytes < 512) {
      throw new TandemError(ErrorCode.BadArgument, `disk copy window of ${windowBytes} bytes: expected at least 512`);
    }
    this.#machine = machine;
    this.#writer = writer;
    this.#windowBytes = windowBytes;
    this.#overlay = options.overlay ?? true;
  }

  /** The change logs of the machine's disks (undefined where a disk has none). */
  logs(): (ChangeLog | undefined)[] {
    return this.#machine.disks.map((d) => (d instanceof ChangeLoggedDisk ? d.log : undefined));
  }

  /** The checkpoint numbering continues after the last one any disk's log saw acknowledged. */
  lastCheckpoint(): number {
    return Math.max(0, ...this.logs().map((log) => log?.lastCheckpoint ?? 0));
  }

  /**
   * Starts a copy of every disk: asks the standby, in turn, for a copy of the changes since the
   * checkpoint the change log goes back to, an overlay copy, and a full copy, and starts the
   * first it accepts. `call` maps the transaction's outcome (a refusal rejects E_FAILED).
   */
  async begin(sender: TransactionSender, call: <T>(p: Promise<T>) => Promise<T>): Promise<void> {
    const disks = this.#machine.disks;
    const logs = this.logs();
    this.#copies = [];
    for (let i = 0; i < disks.length; i++) {
      const disk = disks[i];
      const log = logs[i];
      const lineage = log?.lineage ?? new Uint8Array(LINEAGE_BYTES);
      const image = asImage(disk);
      const reasons: string[] = [];
      const ask = async (mode: DiskSyncMode, since: number, base?: { size: number; identity: Uint8Array }) => {
        this.#writer.diskSyncBegin({
          disk: i, mode, diskSize: disk.size, lineage, since, baseSize: base?.size ?? 0, baseIdentity: base?.identity ?? new Uint8Array(BASE_IDENTITY_BYTES),
        });
        try {
          await call(sendTransaction(sender, this.#writer.take()));
          return true;
        } catch (error) {
          if (error instanceof TandemError && error.code === ErrorCode.Failed) return false; // refused: try the next mode
          throw error;
        }
      };
      let copy: DiskCopy | undefined;
      if (log !== undefined) {
        if (await ask(DiskSyncMode.Changes, log.base)) {
          copy = new DiskCopy(disk, "changes", `the standby holds checkpoint ${log.base} or later of this image`, log.changedRanges());
        } else {
          reasons.push(log.fresh ? "the image's change log is new: no standby holds a checkpoint of it" : `the standby holds no checkpoint of this image since ${log.base}`);
        }
      } else {
        reasons.push("the image keeps no change log");
      }
      if (copy === undefined && this.#overlay && image?.backing) {
        const base = { size: image.backing.size, identity: baseIdentityOf(image.backing) };
        if (await ask(DiskSyncMode.Overlay, 0, base)) copy = new DiskCopy(disk, "overlay", "both images stand on the same base");
        else reasons.push("the standby's image does not stand on the same base, or holds data of its own");
      }
      if (copy === undefined) {
        if (!(await ask(DiskSyncMode.Full, 0))) throw new TandemError(ErrorCode.Failed, `the standby refused a full copy of disk ${i}; its log says why`);
        copy = new DiskCopy(disk, "full", reasons.join("; "));
      }
      this.#copies.push(copy);
    }
    this.#protectedFrom = 0;
    this.#doneAtCheckpoint = -1;
  }

  /** True once every disk's copy was sent whole. */
  get copied(): boolean {
    return this.#copies.every((c) => c.status.done);
  }

  /**
   * True once the standby holds every disk whole as of an acknowledged checkpoint: from the
   * first checkpoint acknowledged after the copies were complete.
   */
  get protected(): boolean {
    return this.#protectedFrom > 0;
  }

  /** Per disk, how its copy goes. */
  status(): DiskCopyStatus[] {
    return this.#copies.map((c) => ({ ...c.status }));
  }

  /**
   * Sends copy windows until `deadline` (performance.now() ms) or until the copies are complete,
   * then returns; call it between checkpoints. It sends at least one window, so the copy moves
   * on even when checkpoints take longer than their interval.
   */
  async pump(sender: TransactionSender, call: <T>(p: Promise<T>) => Promise<T>, deadline: number, signal: AbortSignal): Promise<void> {
    let sent = 0;
    for (let i = 0; i < this.#copies.length; i++) {
      const copy = this.#copies[i];
      while (!copy.status.done) {
        if ((sent > 0 && performance.now() >= deadline) || signal.aborted) return;
        sent++;
        const { writes, zeroes } = copy.take(this.#windowBytes);
        if (writes.length > 0) this.#writer.diskSyncWrites(i, writes);
        if (zeroes.length > 0) this.#writer.diskSyncZeroes(i, zeroes);
        const last = copy.exhausted;
        if (last) this.#writer.diskSyncDone(i);
        await call(sendTransaction(sender, this.#writer.take()));
        if (last) copy.status.done = true;
        // The guest runs on timers: give it its turn between windows (a transport that answers
        // in microtasks would otherwise starve it, as good as pausing it for the copy).
        await new Promise((resolve) => setTimeout(resolve, 0));
      }
    }
  }

  /** Checkpoint `checkpoint` was captured (call while paused). */
  captured(checkpoint: number): void {
    for (const log of this.logs()) log?.captured(checkpoint);
    if (this.#doneAtCheckpoint < 0 && this.copied) this.#doneAtCheckpoint = checkpoint;
  }

  /** Checkpoint `checkpoint` was acknowledged; `carried[i]` says whether it carried writes to disk i. */
  acknowledged(checkpoint: number, carried: readonly boolean[]): void {
    if (this.#protectedFrom === 0 && this.#doneAtCheckpoint >= 0 && checkpoint >= this.#doneAtCheckpoint) this.#protectedFrom = checkpoint;
    if (!this.protected) return; // the logs keep growing until a standby holds the disks whole
    this.logs().forEach((log, i) => log?.acknowledged(checkpoint, carried[i] ?? false));
  }
}
