/**
 * The file under a qcow2 image as its writer sees it: a {@link BlockFile} plus the two facts the
 * write path asks for constantly and must not pay a system call for: how long the file is, and
 * whether any write still awaits a sync.
 */

import type { BlockFile } from "../block-file.ts";

/** A {@link BlockFile} with its length and unsynced state tracked in memory (this process is its only writer). */
export class ImageFile {
  readonly file: BlockFile;
  #length: number;
  #unsynced = false;

  constructor(file: BlockFile) {
    this.file = file;
    this.#length = file.size();
  }

  /** The file's name, for messages. */
  get path(): string {
    return this.file.path;
  }
  /** The file's length in bytes, counting every write made through this object. */
  get length(): number {
    return this.#length;
  }
  /** True if a write or truncation happened since the last {@link sync}. */
  get unsynced(): boolean {
    return this.#unsynced;
  }

  /** Reads into `target` at `offset`; returns the bytes read (fewer only at the end of the file). */
  read(offset: number, target: Uint8Array): number {
    return this.file.read(offset, target);
  }
  /** Writes `data` at `offset`. */
  write(offset: number, data: Uint8Array): void {
    this.file.write(offset, data);
    this.#unsynced = true;
    if (offset + data.length > this.#length) this.#length = offset + data.length;
  }
  /** Makes the file at least `length` bytes long (the new bytes read as zeros). */
  extendTo(length: number): void {
    if (length <= this.#length) return;
    this.file.truncate(length);
    this.#unsynced = true;
    this.#length = length;
  }
  /** Makes every write so far durable. */
  sync(): void {
    this.file.sync();
    this.#unsynced = false;
  }
}
