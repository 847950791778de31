/** The qcow2 format for the registry: probe, open (with repair of a dirty image), create, check. */

import { ErrorCode, TandemError } from "../../errors.ts";
import { readExact, type BlockFile } from "../block-file.ts";
import type { Disk } from "../disk.ts";
import type { DiskFormat, FormatOpenContext } from "../format.ts";
import { checkQcow2 } from "./check.ts";
import { createQcow2 } from "./create.ts";
import { H_CLUSTER_BITS, H_MAGIC, Incompatible, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS, QCOW2_MAGIC, parseHeader, type Qcow2Header } from "./header.ts";
import { ImageFile } from "./image-file.ts";
import { ENTRY_BYTES } from "./l2-entry.ts";
import { Qcow2Disk } from "./qcow2-disk.ts";

/** qcow2 for the registry. */
export const qcow2Format: DiskFormat = {
  name: "qcow2",
  probe: (head) => head.length >= 4 && new DataView(head.buffer, head.byteOffset, head.byteLength).getUint32(H_MAGIC) === QCOW2_MAGIC,
  open: openQcow2,
  create: createQcow2,
  check: checkQcow2,
};

/**
 * Opens the qcow2 image in `file`. A dirty image (lazy refcounts, not closed cleanly) opened for
 * writing is repaired first, as QEMU does; read-only opens read it as it is.
 */
function openQcow2(file: BlockFile, context: FormatOpenContext): Disk {
  const readOnly = context.readOnly === true || file.readOnly;
  let header = readHeader(file);
  if (!readOnly && (header.incompatibleFeatures & Incompatible.Dirty) !== 0n) {
    const report = checkQcow2(file, { repair: true });
    header = readHeader(file);
    if (report.errors > 0 || (header.incompatibleFeatures & Incompatible.Dirty) !== 0n) {
      throw new TandemError(ErrorCode.DiskFormat, `${file.path} was not closed cleanly and its repair left ${report.errors} error(s); run qemu-img check -r all on it`);
    }
  }
  if (header.l1TableOffset + header.l1Size * ENTRY_BYTES > file.size()) {
    throw new TandemError(ErrorCode.DiskFormat, `${file.path}: L1 table (${header.l1Size * ENTRY_BYTES} bytes at ${header.l1TableOffset}) lies past the end of the ${file.size()}-byte file (a truncated image; tandem img check shows what is left)`);
  }
  const l1 = new Uint8Array(header.l1Size * ENTRY_BYTES);
  readExact(file, header.l1TableOffset, l1, "L1 table");
  let refcountTable: Uint8Array | null = null;
  if (!readOnly) {
    const tableBytes = header.refcountTableClusters * 2 ** header.clusterBits;
    if (header.refcountTableOffset + tableBytes > file.size()) {
      throw new TandemError(ErrorCode.DiskFormat, `${file.path}: the refcount table (${tableBytes} bytes at ${header.refcountTableOffset}) runs past the end of the file (a truncated image); it can be read, but repair it (tandem img check -r all) before writing`);
    }
    refcountTable = new Uint8Array(tableBytes);
    readExact(file, header.refcountTableOffset, refcountTable, "refcount table");
  }
  const backingMissing = header.backingFile !== undefined && context.noBacking === true;
  const backing = header.backingFile !== undefined && !backingMissing ? context.openBacking(header.backingFile, header.backingFormat) : null;
  try {
    return new Qcow2Disk({
      file: new ImageFile(file),
      header,
      l1,
      refcountTable,
      backing,
      backingMissing,
      readOnly,
      sync: context.sync === true,
      overlapChecks: context.overlapChecks !== false,
      ...(context.l2CacheBytes !== undefined ? { l2CacheBytes: context.l2CacheBytes } : {}),
    });
  } catch (error) {
    backing?.close();
    throw error;
  }
}

/** Reads the first cluster (or what the file has of it) and parses the header from it. */
function readHeader(file: BlockFile): Qcow2Header {
  const fileSize = file.size();
  const start = new Uint8Array(Math.min(fileSize, H_CLUSTER_BITS + 4));
  readExact(file, 0, start, "qcow2 header");
  // parseHeader rejects a bad cluster_bits; meanwhile read no more than the largest cluster.
  const bits = start.length === H_CLUSTER_BITS + 4 ? new DataView(start.buffer).getUint32(H_CLUSTER_BITS) : MIN_CLUSTER_BITS;
  const head = new Uint8Array(Math.min(fileSize, 2 ** Math.max(MIN_CLUSTER_BITS, Math.min(bits, MAX_CLUSTER_BITS))));
  readExact(file, 0, head, "qcow2 header");
  return parseHeader(head, fileSize, file.path);
}
