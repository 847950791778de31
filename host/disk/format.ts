/**
 * A disk image format as the registry sees it: the seed's plugin idea (cowd chose a plugin per
 * format), as an object per format with probe, open, create and check.
 */

import type { BlockFile } from "./block-file.ts";
import type { Disk } from "./disk.ts";

/** How a disk is opened. */
export interface DiskOpenOptions {
  /** The format; probed from the file's first bytes when absent (raw when nothing matches). */
  format?: string;
  /** Refuse writes; the image file is opened read-only. */
  readOnly?: boolean;
  /** Each write returns only once its data and the metadata that reaches it are durable (the seed's sync mode). */
  sync?: boolean;
  /** qcow2: bytes of L2 tables kept in memory (default: enough for the whole disk, at most 32 MiB). */
  l2CacheBytes?: number;
  /**
   * qcow2: check every write against the image's metadata and refuse one that would land on it
   * (QEMU's overlap-check; default true). false exists only to measure what the check costs (the
   * disk bench, as QEMU's overlap-check=none): a damaged image could then write over its own tables.
   */
  overlapChecks?: boolean;
  /** Do not open backing files: reads of unallocated ranges then fail (for info and check only). */
  noBacking?: boolean;
}

/** What a format's `open` is given besides the file. */
export interface FormatOpenContext extends DiskOpenOptions {
  /**
   * Opens a backing file by the name the image records, read-only: a relative name is relative
   * to the directory of the image that names it. Chains that loop or go too deep fail with
   * E_DISK_BACKING.
   */
  openBacking(name: string, format: string | undefined): Disk;
}

/** How an image is created. */
export interface DiskCreateOptions {
  /** Virtual size in bytes. */
  size: number;
  /** The backing file's name as the image should record it (relative to the new image's directory, or absolute). */
  backingFile?: string;
  /** The backing file's format, recorded where the format can (qcow2's backing format extension). */
  backingFormat?: string;
  /** The allocation unit in bytes, a power of two (the format's default when absent). */
  clusterSize?: number;
  /** qcow2: postpone refcount updates behind the dirty bit (compatible feature lazy_refcounts). */
  lazyRefcounts?: boolean;
}

/** What `tandem img check` found. */
export interface CheckReport {
  /** The format checked. */
  format: string;
  /** Inconsistencies that can lose or corrupt data (a refcount lower than its references, bad pointers). */
  errors: number;
  /** Space marked used that nothing references: harmless. */
  leaks: number;
  /** Errors repaired by this check (with repair). */
  errorsFixed: number;
  /** Leaks repaired by this check (with repair). */
  leaksFixed: number;
  /** One line per finding, in the spirit of `qemu-img check`'s. */
  messages: string[];
  /** The end of the last byte the metadata uses, when the format knows it. */
  imageEndOffset?: number;
}

/** One image format. */
export interface DiskFormat {
  /** The registry name, as `-f` takes it. */
  readonly name: string;
  /** True if `head` (up to the file's first 4096 bytes) starts an image of this format. */
  probe(head: Uint8Array): boolean;
  /** Opens an image in `file`, which the disk owns from now on (and closes on close). */
  open(file: BlockFile, context: FormatOpenContext): Disk;
  /** Writes a new empty image into the empty `file`. */
  create(file: BlockFile, options: DiskCreateOptions): void;
  /** Checks the image's metadata; with `repair`, fixes what it can. Formats without metadata omit it. */
  check?(file: BlockFile, options: { repair: boolean }): CheckReport;
}
