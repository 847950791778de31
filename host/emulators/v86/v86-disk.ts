/**
 * A tandem disk in the shape v86 takes as `hda`: the duck-typed "loadable" its starter accepts
 * besides `{ buffer }` (copy/v86 src/buffer.js, SyncBuffer, is the model; 0.5.462 also calls
 * `get_and_cache` and `get_from_cache`). Every access is synchronous, as SyncBuffer's are, so an
 * IDE transfer completes inside the CPU's own step and nothing touches the disk while the guest
 * is stopped. Guest writes go to the disk and are reported, so they travel in checkpoints.
 *
 * The disk's contents stay out of v86's state (`get_state` returns only the size): a checkpoint
 * carries them as disk writes, and v86's own SyncBuffer would put the whole image in every state.
 *
 * A read-only drive (a CD-ROM, or a disk opened read-only) drops every write: v86's IDE model has
 * no way to fail a write, so the guest is told it succeeded, but the image never changes and
 * nothing is reported. Dropped writes are counted for whoever wants to see the guest tried.
 */

import type { MachineDisk } from "../../machine/machine.ts";

/** The loadable v86 reads and writes; see the file comment. */
export class V86Disk {
  readonly byteLength: number;
  onload: ((event: { buffer?: ArrayBuffer }) => void) | undefined;
  onprogress: ((event: unknown) => void) | undefined;
  /** Writes dropped because the drive is read-only. */
  droppedWrites = 0;
  readonly readOnly: boolean;
  readonly #disk: MachineDisk;
  readonly #written: (offset: number, data: Uint8Array) => void;

  /**
   * `written` is told of each guest write, after the disk has it. With `readOnly` (or a disk
   * that says it is read-only) writes are dropped instead.
   */
  constructor(disk: MachineDisk, written: (offset: number, data: Uint8Array) => void, readOnly = false) {
    this.#disk = disk;
    this.#written = written;
    this.byteLength = disk.size;
    this.readOnly = readOnly || disk.readOnly === true;
  }

  load(): void {
    this.onload?.({});
  }

  get(start: number, length: number, done: (data: Uint8Array) => void): void {
    done(this.#disk.read(start, length));
  }

  get_and_cache(start: number, length: number, done: (data: Uint8Array) => void): void {
    this.get(start, length, done);
  }

  get_from_cache(start: number, length: number): Uint8Array {
    return this.#disk.read(start, length);
  }

  set(start: number, data: Uint8Array, done: () => void): void {
    if (this.readOnly) {
      this.droppedWrites++;
    } else {
      this.#disk.write(start, data);
      this.#written(start, data);
    }
    done();
  }

  get_buffer(done: (buffer: ArrayBuffer | undefined) => void): void {
    done(this.#disk.read(0, this.#disk.size).buffer as ArrayBuffer);
  }

  get_state(): unknown[] {
    return [this.byteLength];
  }

  set_state(): void {
    // The contents come from checkpoints, not from v86's state.
  }
}
