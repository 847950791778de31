/**
 * The file under a qcow2 image as its writer sees it: a {@link BlockFile} plus the two facts the
 * write path asks for constantly and must not pay a system call for: how long the file is, and
 * whether any write still awaits a sync.
 */

import type { BlockFile } from "../block-file.ts";
import type { MetadataIndex, MetadataKinds } from "./metadata-index.ts";

/**
 * A {@link BlockFile} with its length and unsynced state tracked in memory (this process is its
 * only writer), and, once {@link protect} is called, every write checked against the image's
 * metadata: the one place all of a writer's writes pass, so no write path can skip the check.
 */
export class ImageFile {
  readonly file: BlockFile;
  #length: number;
  #unsynced = false;
  #metadata: MetadataIndex | null = null;

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
  /** Checks every later write against `metadata` (QEMU's overlap check). */
  protect(metadata: MetadataIndex): void {
    this.#metadata = metadata;
  }

  /**
   * Writes `data` at `offset`: guest data if `allowed` is 0 (the default), else metadata of the
   * kinds it names. A write onto any other metadata is refused (metadata-index.ts).
   */
  write(offset: number, data: Uint8Array, allowed: MetadataKinds = 0): void {
    this.#metadata?.guard(offset, data.length, allowed);
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
