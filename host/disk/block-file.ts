/**
 * The file under a disk image: positioned reads and writes, sync and truncate. Formats talk to a
 * {@link BlockFile}, not to `node:fs`, so tests can record every write and replay any prefix of
 * them as the state a crash would leave.
 */

import { closeSync, fdatasyncSync, fsyncSync, fstatSync, ftruncateSync, openSync, readSync, writeSync } from "node:fs";
import { ErrorCode, TandemError } from "../errors.ts";
import { holeSeeker } from "../runtime/seek-data.ts";

/** A file holding an image. */
export interface BlockFile {
  /** The path it was opened from (for messages, and to resolve relative backing names). */
  readonly path: string;
  /** Writes and truncation fail with E_DISK_READ_ONLY. */
  readonly readOnly: boolean;
  /** The file's length in bytes. */
  size(): number;
  /** Reads into `target` from `offset`; returns how many bytes there were (fewer only at the end of the file). */
  read(offset: number, target: Uint8Array): number;
  /** Writes all of `data` at `offset`, extending the file if needed. */
  write(offset: number, data: Uint8Array): void;
  /** Makes every write so far durable (fdatasync). */
  sync(): void;
  /** Sets the file's length. */
  truncate(length: number): void;
  /** Closes the file; later calls fail. */
  close(): void;
  /**
   * The holes in [offset, offset + length) as [start, end) pairs, found with SEEK_DATA/SEEK_HOLE;
   * undefined where the runtime cannot seek them (Node). Past the end of the file is a hole.
   */
  holes?(offset: number, length: number): Array<[number, number]> | undefined;
  /** Bytes the file occupies on its device: less than its size only if it has holes. */
  allocatedBytes?(): number;
}

/** A {@link BlockFile} over a real file, through `node:fs` (the same on Node, Deno and Bun). */
export class FileBlockFile implements BlockFile {
  readonly path: string;
  readonly readOnly: boolean;
  #fd: number | null;

  /** Opens `path`; `create` makes a new empty file (and fails if it exists). */
  static open(path: string, options: { readOnly?: boolean; create?: boolean } = {}): FileBlockFile {
    const flags = options.create ? "wx+" : options.readOnly ? "r" : "r+";
    try {
      return new FileBlockFile(path, options.readOnly === true && !options.create, openSync(path, flags));
    } catch (error) {
      throw ioError(`open ${path}`, error);
    }
  }

  private constructor(path: string, readOnly: boolean, fd: number) {
    this.path = path;
    this.readOnly = readOnly;
    this.#fd = fd;
  }

  size(): number {
    try {
      return fstatSync(this.#handle()).size;
    } catch (error) {
      throw ioError(`stat ${this.path}`, error);
    }
  }
  read(offset: number, target: Uint8Array): number {
    const fd = this.#handle();
    let done = 0;
    try {
      // readSync may return short counts; only 0 means the end of the file.
      while (done < target.length) {
        const n = readSync(fd, target, done, target.length - done, offset + done);
        if (n === 0) break;
        done += n;
      }
    } catch (error) {
      throw ioError(`read ${target.length} bytes at ${offset} of ${this.path}`, error);
    }
    return done;
  }
  write(offset: number, data: Uint8Array): void {
    const fd = this.#writable();
    let done = 0;
    try {
      while (done < data.length) done += writeSync(fd, data, done, data.length - done, offset + done);
    } catch (error) {
      throw ioError(`write ${data.length} bytes at ${offset} of ${this.path}`, error);
    }
  }
  sync(): void {
    if (this.readOnly) return;
    try {
      fdatasyncSync(this.#handle());
    } catch (error) {
      throw ioError(`sync ${this.path}`, error);
    }
  }
  truncate(length: number): void {
    const fd = this.#writable();
    try {
      ftruncateSync(fd, length);
    } catch (error) {
      throw ioError(`truncate ${this.path} to ${length} bytes`, error);
    }
  }
  holes(offset: number, length: number): Array<[number, number]> | undefined {
    const seeker = holeSeeker();
    if (seeker === null) return undefined;
    const fd = this.#handle();
    const end = offset + length;
    const holes: Array<[number, number]> = [];
    // Each step moves past one data run, so the loop ends; a failed seek ends it too.
    for (let pos = offset; pos < end; ) {
      const data = seeker.seekData(fd, pos);
      if (data < 0 || data >= end) {
        holes.push([pos, end]);
        break;
      }
      if (data > pos) holes.push([pos, data]);
      const hole = seeker.seekHole(fd, data);
      if (hole <= data) break;
      pos = hole;
    }
    return holes;
  }
  allocatedBytes(): number {
    try {
      return fstatSync(this.#handle()).blocks * 512;
    } catch (error) {
      throw ioError(`stat ${this.path}`, error);
    }
  }
  close(): void {
    if (this.#fd === null) return;
    const fd = this.#fd;
    this.#fd = null;
    try {
      closeSync(fd);
    } catch (error) {
      throw ioError(`close ${this.path}`, error);
    }
  }

  #handle(): number {
    if (this.#fd === null) throw new TandemError(ErrorCode.InvalidState, `${this.path} is closed`);
    return this.#fd;
  }
  #writable(): number {
    if (this.readOnly) throw new TandemError(ErrorCode.DiskReadOnly, `${this.path} is open read-only`);
    return this.#handle();
  }
}

/** Reads exactly `target.length` bytes at `offset`, or fails with E_DISK_FORMAT naming `what` lies past the end. */
export function readExact(file: BlockFile, offset: number, target: Uint8Array, what: string): void {
  const n = file.read(offset, target);
  if (n !== target.length) {
    throw new TandemError(ErrorCode.DiskFormat, `${file.path}: ${what} at ${offset} (${target.length} bytes) runs past the end of the file`);
  }
}

function ioError(what: string, error: unknown): TandemError {
  const reason = error instanceof Error ? error.message : String(error);
  return new TandemError(ErrorCode.DiskIo, `cannot ${what}: ${reason}`);
}

/** fsync on a directory makes the names in it durable (Linux, macOS); Windows cannot open directories and journals names itself. */
export function syncDirectory(dir: string): void {
  if (process.platform === "win32") return;
  try {
    const fd = openSync(dir, "r");
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new TandemError(ErrorCode.DiskIo, `cannot sync directory ${dir} after creating a file in it: ${reason}`);
  }
}
