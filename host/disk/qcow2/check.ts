/**
 * `tandem img check` for qcow2: the behaviour of `qemu-img check [-r all]` (cow-disks.md sections
 * 3 and 4), re-implemented. A check walks all metadata, counts the references to every host
 * cluster and compares them with the stored refcounts: fewer refcounts than references is an
 * error (the cluster could be handed out twice), more is a leak (wasted space). It also checks
 * pointers (alignment, past the end of the file, reserved bits), the COPIED flags of the active
 * tables, and refcount overflow.
 *
 * Repair rebuilds the refcount structure when any refcount is wrong (check-rebuild.ts explains the
 * crash ordering), fixes COPIED flags, then checks again; if no error remains it clears the dirty
 * and corrupt bits with a synced in-place write, last, so a crash during repair leaves a dirty
 * image dirty. The header is only ever patched in place, so a version 2 image stays version 2.
 */

import { type BlockFile, readExact } from "../block-file.ts";
import { ErrorCode, TandemError } from "../../errors.ts";
import type { CheckReport } from "../format.ts";
import { checkCopiedFlags } from "./check-copied.ts";
import { Findings } from "./check-findings.ts";
import { rebuildRefcounts } from "./check-rebuild.ts";
import { type Scan, scanImage } from "./check-scan.ts";
import { Extension, H_CLUSTER_BITS, H_INCOMPATIBLE_FEATURES, Incompatible, MAX_CLUSTER_BITS, type Qcow2Header, parseHeader } from "./header.ts";

/**
 * Checks the qcow2 image in `file`; with `repair`, rebuilds its refcounts, fixes COPIED flags and
 * clears the dirty and corrupt bits. After a repair the counts are those of a second check of the
 * repaired image, and `errorsFixed`/`leaksFixed` how many fewer there are than before. Fails with
 * E_DISK_FORMAT on a header or snapshot table that cannot be read at all, E_DISK_UNSUPPORTED on
 * features a check cannot count (persistent bitmaps), E_DISK_READ_ONLY for a repair of a
 * read-only file.
 */
export function checkQcow2(file: BlockFile, options: { repair: boolean }): CheckReport {
  if (options.repair && file.readOnly) {
    throw new TandemError(ErrorCode.DiskReadOnly, `${file.path}: cannot repair an image opened read-only`);
  }
  const header = readHeader(file);
  const first = checkPass(file, header);
  const dirty = (header.incompatibleFeatures & (Incompatible.Dirty | Incompatible.Corrupt)) !== 0n;
  if (!options.repair || (first.findings.errors === 0 && first.findings.leaks === 0 && !dirty)) {
    return report(first, [first.findings], 0, 0);
  }

  const log = new Findings();
  let refcountOf = first.storedRefcount;
  if (first.refcountsDiffer || first.structureDamaged) {
    log.note("Rebuilding refcount structure");
    refcountOf = rebuildRefcounts(file, first).refcountOf;
  }
  checkCopiedFlags(file, header, refcountOf, log, true);
  file.sync();

  const repairedHeader = readHeader(file);
  const second = checkPass(file, repairedHeader);
  if (second.findings.errors === 0 && dirty) clearDirtyAndCorrupt(file, repairedHeader);
  const errorsFixed = Math.max(0, first.findings.errors - second.findings.errors);
  const leaksFixed = Math.max(0, first.findings.leaks - second.findings.leaks);
  log.note(`The following inconsistencies were found and repaired: ${leaksFixed} leaked clusters, ${errorsFixed} corruptions`);
  log.note("Double checking the fixed image now...");
  return report(second, [first.findings, log, second.findings], errorsFixed, leaksFixed);
}

/** Reads and parses the header from the first cluster; refuses what a check cannot count. */
function readHeader(file: BlockFile): Qcow2Header {
  const fileSize = file.size();
  const probe = new Uint8Array(Math.min(fileSize, H_CLUSTER_BITS + 4));
  readExact(file, 0, probe, "qcow2 header");
  const clusterBits = probe.length === H_CLUSTER_BITS + 4 ? new DataView(probe.buffer).getUint32(H_CLUSTER_BITS) : 0;
  // parseHeader validates cluster_bits; read no more than the largest cluster meanwhile.
  const head = new Uint8Array(Math.min(fileSize, 2 ** Math.min(clusterBits, MAX_CLUSTER_BITS)));
  readExact(file, 0, head, "qcow2 header");
  const header = parseHeader(head, fileSize, file.path);
  if (header.unknownExtensions.some((extension) => extension.type === Extension.Bitmaps)) {
    throw new TandemError(ErrorCode.DiskUnsupported, `${file.path}: checking qcow2 images with persistent bitmaps is not supported (remove them with qemu-img bitmap --remove)`);
  }
  return header;
}

/** One read-only pass: the scan, then the COPIED flags checked against the stored refcounts. */
function checkPass(file: BlockFile, header: Qcow2Header): Scan {
  const scan = scanImage(file, header);
  checkCopiedFlags(file, header, scan.storedRefcount, scan.findings, false);
  return scan;
}

/** Clears incompatible bits 0 (dirty) and 1 (corrupt) at header offset 72, synced (version 3 only has them). */
function clearDirtyAndCorrupt(file: BlockFile, header: Qcow2Header): void {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, header.incompatibleFeatures & ~(Incompatible.Dirty | Incompatible.Corrupt));
  file.write(H_INCOMPATIBLE_FEATURES, bytes);
  file.sync();
}

/** The report of the last pass, with the lines of every pass and repair step in `logs`. */
function report(pass: Scan, logs: Findings[], errorsFixed: number, leaksFixed: number): CheckReport {
  const { errors, leaks } = pass.findings;
  const messages = logs.flatMap((log) => log.lines());
  if (errors === 0 && leaks === 0) messages.push("No errors were found on the image.");
  if (errors > 0) messages.push(`${errors} errors were found on the image.`, "Data may be corrupted, or further writes to the image may corrupt it.");
  if (leaks > 0) messages.push(`${leaks} leaked clusters were found on the image.`, "This means waste of disk space, but no harm to data.");
  const imageEndOffset = (pass.highestCluster + 1) * pass.geometry.clusterSize;
  messages.push(`Image end offset: ${imageEndOffset}`);
  return { format: "qcow2", errors, leaks, errorsFixed, leaksFixed, messages, imageEndOffset };
}
