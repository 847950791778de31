/** The raw format: the file is the disk, byte for byte. */

import { ErrorCode, TandemError } from "../errors.ts";
import type { BlockFile } from "./block-file.ts";
import { DiskBase, mergeExtents, type Disk, type DiskExtent, type DiskInfo } from "./disk.ts";
import type { DiskCreateOptions, DiskFormat, FormatOpenContext } from "./format.ts";
import { ZeroFinder, splitByZeros } from "./zero-ranges.ts";

/** Zeros written per call when a raw disk is zeroed or discarded (it has no holes to punch portably). */
const ZERO_CHUNK = 1 << 20;

/** A raw image file as a disk. Bytes past the end of a short file read as zeros. */
export class RawDisk extends DiskBase {
  readonly format = "raw";
  readonly size: number;
  readonly readOnly: boolean;
  readonly backing: Disk | null = null;
  readonly #file: BlockFile;
  readonly #sync: boolean;

  constructor(file: BlockFile, options: { readOnly?: boolean; sync?: boolean } = {}) {
    super();
    this.#file = file;
    this.size = file.size();
    this.readOnly = options.readOnly === true || file.readOnly;
    this.#sync = options.sync === true;
  }

  protected doRead(offset: number, target: Uint8Array): void {
    const n = this.#file.read(offset, target);
    if (n < target.length) target.fill(0, n);
  }
  protected doWrite(offset: number, data: Uint8Array): void {
    this.#file.write(offset, data);
    if (this.#sync) this.#file.sync();
  }
  protected doWriteZeroes(offset: number, length: number): void {
    const zeros = new Uint8Array(Math.min(length, ZERO_CHUNK));
    for (let done = 0; done < length; done += zeros.length) {
      this.#file.write(offset + done, length - done < zeros.length ? zeros.subarray(0, length - done) : zeros);
    }
    if (this.#sync) this.#file.sync();
  }
  protected doDiscard(offset: number, length: number): void {
    this.doWriteZeroes(offset, length);
  }
  protected doFlush(): void {
    this.#file.sync();
  }
  /** Data, except where the file has holes (or, on Node, all-zero blocks of a sparse file: zero-ranges.ts). */
  protected doMap(offset: number, length: number): DiskExtent[] {
    const extents: DiskExtent[] = [];
    splitByZeros({ offset, length, present: true, zero: false, data: true, depth: 0, fileOffset: offset }, new ZeroFinder(this.#file), false, extents);
    return mergeExtents(extents);
  }
  protected doClose(): void {
    if (!this.readOnly) this.#file.sync();
    this.#file.close();
  }
  info(): DiskInfo {
    return { format: this.format, fileName: this.#file.path, virtualSize: this.size, fileSize: this.#file.size() };
  }
}

/** The raw format for the registry. It probes nothing: raw is what an image is when no format claims it. */
export const rawFormat: DiskFormat = {
  name: "raw",
  probe: () => false,
  open: (file: BlockFile, context: FormatOpenContext) => new RawDisk(file, context),
  create(file: BlockFile, options: DiskCreateOptions) {
    if (options.backingFile !== undefined) throw new TandemError(ErrorCode.DiskUnsupported, "a raw image cannot have a backing file");
    file.truncate(options.size);
  },
};
