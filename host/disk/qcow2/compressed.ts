/**
 * Reading compressed qcow2 clusters (qemu-img convert -c): raw deflate, as qcow2.rst's
 * "Compressed Clusters Descriptor" and QEMU's zlib path define it. Other compression types are
 * refused when the header is parsed (header.ts), so only deflate reaches this file.
 */

import { constants, inflateRawSync } from "node:zlib";
import { ErrorCode, TandemError } from "../../errors.ts";
import type { ImageFile } from "./image-file.ts";
import { COMPRESSED_SECTOR, compressedByteLength, compressedOffset } from "./l2-entry.ts";

/** Inflates compressed clusters, remembering the last one (sequential reads hit it many times). */
export class CompressedClusterReader {
  readonly #file: ImageFile;
  readonly #clusterBits: number;
  readonly #clusterSize: number;
  #cachedOffset = -1;
  #cached: Uint8Array;

  constructor(file: ImageFile, clusterBits: number) {
    this.#file = file;
    this.#clusterBits = clusterBits;
    this.#clusterSize = 2 ** clusterBits;
    this.#cached = new Uint8Array(0);
  }

  /**
   * The whole guest cluster that the compressed L2 entry (`hi`, `lo`) describes: exactly one
   * cluster. The descriptor is validated against the file before anything is read; bad data
   * fails with E_DISK_FORMAT.
   */
  read(hi: number, lo: number): Uint8Array {
    const offset = compressedOffset(hi, lo, this.#clusterBits);
    if (offset === this.#cachedOffset) return this.#cached;
    this.check(hi, lo);
    const length = compressedByteLength(hi, lo, this.#clusterBits);
    const input = new Uint8Array(Math.min(length, this.#file.length - offset));
    this.#file.read(offset, input);
    let output: Uint8Array;
    try {
      // Z_SYNC_FLUSH accepts a stream that fills the cluster without an end marker, as QEMU does.
      output = inflateRawSync(input, { maxOutputLength: this.#clusterSize, finishFlush: constants.Z_SYNC_FLUSH });
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      throw new TandemError(ErrorCode.DiskFormat, `${this.#file.path}: compressed cluster at ${offset} does not inflate to one ${this.#clusterSize}-byte cluster: ${reason}`);
    }
    if (output.length !== this.#clusterSize) {
      throw new TandemError(ErrorCode.DiskFormat, `${this.#file.path}: compressed cluster at ${offset} inflates to ${output.length} bytes, not one ${this.#clusterSize}-byte cluster`);
    }
    this.#cachedOffset = offset;
    this.#cached = output;
    return output;
  }

  /** Fails with E_DISK_FORMAT unless the compressed L2 entry (`hi`, `lo`) describes bytes inside the file, after the header. */
  check(hi: number, lo: number): void {
    const offset = compressedOffset(hi, lo, this.#clusterBits);
    const length = compressedByteLength(hi, lo, this.#clusterBits);
    const fileLength = this.#file.length;
    // QEMU does not pad the last compressed cluster, so its final sector may run past the end.
    const sectorEnd = Math.ceil(fileLength / COMPRESSED_SECTOR) * COMPRESSED_SECTOR;
    if (offset < this.#clusterSize || offset >= fileLength || offset + length > sectorEnd) {
      throw new TandemError(ErrorCode.DiskFormat, `${this.#file.path}: compressed cluster data (${length} bytes at ${offset}) lies outside the ${fileLength}-byte file`);
    }
  }

  /** Forgets the remembered cluster (its host bytes may be reused once freed). */
  forget(): void {
    this.#cachedOffset = -1;
    this.#cached = new Uint8Array(0);
  }
}
