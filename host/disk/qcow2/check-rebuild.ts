/**
 * Rebuilds a qcow2 image's refcount structure from the references a scan counted, as
 * `qemu-img check -r all` does when refcounts are wrong.
 *
 * Where: in the first run of clusters that nothing references, inside the file or past its end.
 * "Nothing" includes the old refcount structure (still in force until the switch) and pointers
 * past the end of the file: a data cluster pointing at EOF + 10 must not find a refcount block
 * there after the repair. If the new structure carries the file's end over such a pointer, the
 * cluster it names now exists (reading as zeros, as it did) and is counted.
 *
 * Crash ordering (cow-disks.md 3.1 and 3.2): the new refcount blocks and table are written into
 * those unreferenced clusters and synced; only then does one in-place write of header bytes
 * 48..59 (refcount_table_offset and refcount_table_clusters, inside one sector) switch to them,
 * synced again. A crash before the switch leaves the old structure in force with some
 * unreferenced clusters rewritten; a crash after it leaves the new one, whose refcounts equal the
 * references. At no point is a refcount lower than its references (beyond what was already
 * wrong). The old table and blocks become free at the switch: the new refcounts do not count them.
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
  const fileClusters = Math.ceil(scan.fileSize / cs);

  const refcounts = scan.references.slice();
  // The old structure is not counted in the new refcounts, but stays in force until the switch:
  // nothing new may be written over it.
  const oldStructure = new Set(scan.refcountStructure);
  const beyondEnd = new Map(scan.beyondEnd);
  for (const cluster of scan.refcountStructure) {
    // A count that overflowed stays at the maximum: it was at least one more than that.
    if (cluster < slots && refcounts[cluster] > 0 && !scan.overflowed.has(cluster)) refcounts[cluster]--;
    const beyond = beyondEnd.get(cluster);
    if (beyond !== undefined) beyondEnd.set(cluster, beyond - 1);
  }
  const free = (cluster: number): boolean =>
    cluster > 0 && (cluster >= slots || refcounts[cluster] === 0) && !oldStructure.has(cluster) && !beyondEnd.has(cluster);
  const inUse = new Set<number>();
  for (let c = 0; c < slots; c++) if (refcounts[c] > 0) inUse.add(Math.floor(c / perBlock));

  // The new blocks and table go in one run of free clusters, the first that is long enough, inside
  // the file or past its end. Find how many blocks and table clusters cover the clusters in use
  // and themselves; a reference past the old end that the run carries the file over is in use too.
  let blocks = 0;
  let tableClusters = 0;
  let start = 0;
  let blockIndices: number[] = [];
  for (let pass = 0; ; pass++) {
    if (pass === MAX_LAYOUT_PASSES) throw new TandemError(ErrorCode.DiskFormat, `${file.path}: could not lay out a new refcount structure`);
    start = firstFreeRun(free, blocks + tableClusters);
    const end = start + blocks + tableClusters;
    const newEnd = Math.max(fileClusters, end);
    const covered = new Set(inUse);
    for (let c = start; c < end; c++) covered.add(Math.floor(c / perBlock));
    for (const cluster of beyondEnd.keys()) if (cluster < newEnd) covered.add(Math.floor(cluster / perBlock));
    blockIndices = [...covered].sort((a, b) => a - b);
    const tableEntries = blockIndices.length === 0 ? 1 : blockIndices[blockIndices.length - 1] + 1;
    const neededTable = Math.ceil((tableEntries * ENTRY_BYTES) / cs);
    if (blockIndices.length === blocks && neededTable === tableClusters) break;
    blocks = blockIndices.length;
    tableClusters = neededTable;
  }
  if (tableClusters * cs > MAX_REFCOUNT_TABLE_BYTES) {
    throw new TandemError(ErrorCode.DiskUnsupported, `${file.path}: a refcount table of ${tableClusters} clusters is over QEMU's ${MAX_REFCOUNT_TABLE_BYTES}-byte limit`);
  }
  const end = start + blocks + tableClusters;
  const newEnd = Math.max(fileClusters, end);
  const refcountOf = (cluster: number): number => {
    if (cluster >= start && cluster < end) return 1;
    if (cluster >= fileClusters) return cluster < newEnd ? (beyondEnd.get(cluster) ?? 0) : 0;
    return cluster < slots ? refcounts[cluster] : 0;
  };

  const block = new Uint8Array(cs);
  const table = new Uint8Array(tableClusters * cs);
  const tableView = new DataView(table.buffer);
  blockIndices.forEach((index, k) => {
    block.fill(0);
    const base = index * perBlock;
    const last = Math.min(perBlock, Math.max(slots, newEnd) - base);
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

/** The first cluster of a run of `length` clusters that are all free (searched from cluster 1). */
function firstFreeRun(free: (cluster: number) => boolean, length: number): number {
  if (length <= 0) return 1;
  let run = 0;
  for (let c = 1; ; c++) {
    if (!free(c)) {
      run = 0;
      continue;
    }
    run++;
    if (run >= length) return c - length + 1;
  }
}
