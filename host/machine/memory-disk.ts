/** A disk held in memory: what a machine uses until it is given a disk image (issue 6's formats). */

import { ErrorCode, TandemError } from "../errors.ts";
import type { MachineDisk } from "./machine.ts";

/** An in-memory disk. */
export class MemoryDisk implements MachineDisk {
  /** The disk's bytes. */
  readonly bytes: Uint8Array;

  /** A zeroed disk of `size` bytes. */
  constructor(size: number) {
    this.bytes = new Uint8Array(size);
  }
  get size(): number {
    return this.bytes.length;
  }
  read(offset: number, length: number): Uint8Array {
    this.#check(offset, length);
    return this.bytes.slice(offset, offset + length);
  }
  write(offset: number, data: Uint8Array): void {
    this.#check(offset, data.length);
    this.bytes.set(data, offset);
  }
  #check(offset: number, length: number): void {
    if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length < 0 || offset + length > this.bytes.length) {
      throw new TandemError(ErrorCode.OutOfRange, `disk access of ${length} bytes at ${offset} is outside its ${this.bytes.length} bytes`);
    }
  }
}
