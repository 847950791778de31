/**
 * Rebuilds a qcow2 image's refcount structure from the references a scan counted, as
 * `qemu-img check -r all` does when refcounts are wrong.
 *
 * Crash ordering (cow-disks.md 3.1 and 3.2): the new refcount blocks and table are written past
 * everything in use, where the old structure sees only free clusters, and synced; only then does
 * one in-place write of header bytes 48..59 (refcount_table_offset and refcount_table_clusters,
 * inside one sector) switch to them, synced again. A crash before the switch leaves the old
 * structure in force with some unreferenced bytes at the end; a crash after it leaves the new one,
 * whose refcounts equal the references. At no point is a refcount lower than its references
 * (beyond what was already wrong). The old table and blocks become free at the switch: the new
 * refcounts do not count them.
 */

import type { BlockFile } from "../block-file.ts";
import { ErrorCode, TandemError } from "../../errors.ts";
import { H_REFCOUNT_TABLE_CLUSTERS, H_REFCOUNT_TABLE_OFFSET, MAX_REFCOUNT_TABLE_BYTES } from "./header.ts";
import { ENTRY_BYTES } from "./l2-entry.ts";
import { writeRefcount } from "./refcount-entry.ts";
import type { Scan } from "./check-scan.ts";

const TWO_32 = 0x1_0000_0000;
/** Layout iterations: each pass adds the blocks and table clusters that cover the previous pass's, so a few suffice. */
const MAX_LAYOUT_PASSES = 64;

/** The refcount structure a rebuild wrote. */
export interface Rebuilt {
  /** The refcount every host cluster now has. */
  refcountOf(cluster: number): number;
}

/** Writes a fresh refcount structure for `scan`'s references and switches the header to it. */
export function rebuildRefcounts(file: BlockFile, scan: Scan): Rebuilt {
  const { geometry: geo, slots } = scan;
  const cs = geo.clusterSize;
  const perBlock = geo.refcountBlockEntries;

  const refcounts = scan.references.slice();
  for (const cluster of scan.refcountStructure) if (refcounts[cluster] > 0) refcounts[cluster]--;

  let lastUsed = 0;
  for (let c = slots - 1; c > 0; c--) {
    if (refcounts[c] > 0) {
      lastUsed = c;
      break;
    }
  }
  const start = Math.max(Math.ceil(scan.fileSize / cs), lastUsed + 1);
  const inUse = new Uint8Array(Math.ceil(slots / perBlock));
  for (let c = 0; c < slots; c++) if (refcounts[c] > 0) inUse[Math.floor(c / perBlock)] = 1;

  // Find how many blocks and table clusters cover the clusters in use and themselves.
  let blocks = 0;
  let tableClusters = 0;
  let blockIndices: number[] = [];
  for (let pass = 0; ; pass++) {
    if (pass === MAX_LAYOUT_PASSES) throw new TandemError(ErrorCode.DiskFormat, `${file.path}: could not lay out a new refcount structure`);
    const end = start + blocks + tableClusters;
    const tableEntries = Math.ceil(end / perBlock);
    blockIndices = [];
    for (let i = 0; i < tableEntries; i++) {
      if ((i < inUse.length && inUse[i] === 1) || ((i + 1) * perBlock > start && i * perBlock < end)) blockIndices.push(i);
    }
    const neededTable = Math.ceil((tableEntries * ENTRY_BYTES) / cs);
    if (blockIndices.length === blocks && neededTable === tableClusters) break;
    blocks = blockIndices.length;
    tableClusters = neededTable;
  }
  if (tableClusters * cs > MAX_REFCOUNT_TABLE_BYTES) {
    throw new TandemError(ErrorCode.DiskUnsupported, `${file.path}: a refcount table of ${tableClusters} clusters is over QEMU's ${MAX_REFCOUNT_TABLE_BYTES}-byte limit`);
  }
  const end = start + blocks + tableClusters;
  const refcountOf = (cluster: number): number => {
    if (cluster >= start && cluster < end) return 1;
    return cluster < slots ? refcounts[cluster] : 0;
  };

  const block = new Uint8Array(cs);
  const table = new Uint8Array(tableClusters * cs);
  const tableView = new DataView(table.buffer);
  blockIndices.forEach((index, k) => {
    block.fill(0);
    const base = index * perBlock;
    const last = Math.min(perBlock, Math.max(slots, end) - base);
    for (let i = 0; i < last; i++) {
      const value = refcountOf(base + i);
      if (value !== 0) writeRefcount(block, i, geo.refcountBits, value);
    }
    const offset = (start + k) * cs;
    file.write(offset, block);
    tableView.setUint32(index * ENTRY_BYTES, Math.floor(offset / TWO_32));
    tableView.setUint32(index * ENTRY_BYTES + 4, offset >>> 0);
  });
  const tableOffset = (start + blocks) * cs;
  file.write(tableOffset, table);
  file.sync();

  const fields = new Uint8Array(H_REFCOUNT_TABLE_CLUSTERS + 4 - H_REFCOUNT_TABLE_OFFSET);
  const view = new DataView(fields.buffer);
  view.setUint32(0, Math.floor(tableOffset / TWO_32));
  view.setUint32(4, tableOffset >>> 0);
  view.setUint32(H_REFCOUNT_TABLE_CLUSTERS - H_REFCOUNT_TABLE_OFFSET, tableClusters);
  file.write(H_REFCOUNT_TABLE_OFFSET, fields);
  file.sync();
  return { refcountOf };
}
