/**
 * Whether a qcow2 image looks metadata-preallocated: more of its clusters are in use (a refcount
 * above 0) than its file has blocks on disk for, by QEMU's margin (over a ninth, or two clusters,
 * more; QEMU's qcow2_detect_metadata_preallocation). QEMU asks the file system where a data
 * cluster's bytes are holes only for such images, and so reports "zero" under allocated
 * clusters only there; `map` follows it, so the two maps agree.
 */

import type { BlockFile } from "../block-file.ts";
import { entriesInFile } from "./check-scan.ts";
import { geometry, type Qcow2Header } from "./header.ts";
import { ENTRY_BYTES } from "./l2-entry.ts";
import { readRefcountSaturating } from "./refcount-entry.ts";

const TWO_32 = 0x1_0000_0000;

/**
 * True if more clusters have a refcount than `file` has allocated clusters (by QEMU's margin).
 * The count stops at the threshold, and reads at most the refcount blocks that cover the file.
 */
export function looksMetadataPreallocated(file: BlockFile, header: Qcow2Header): boolean {
  if (file.allocatedBytes === undefined) return false;
  const geo = geometry(header);
  const cs = geo.clusterSize;
  const realClusters = Math.floor(file.allocatedBytes() / cs);
  const threshold = Math.max(Math.floor((realClusters * 10) / 9), realClusters + 2);
  const fileClusters = Math.ceil(file.size() / cs);
  const perBlock = geo.refcountBlockEntries;
  const entries = Math.min(entriesInFile(header.refcountTableOffset, (header.refcountTableClusters * cs) / ENTRY_BYTES, file.size()), Math.ceil(fileClusters / perBlock));
  const table = new Uint8Array(entries * ENTRY_BYTES);
  file.read(header.refcountTableOffset, table);
  const view = new DataView(table.buffer);
  const block = new Uint8Array(cs);
  let inUse = 0;
  for (let i = 0; i < entries && inUse < threshold; i++) {
    const offset = view.getUint32(i * ENTRY_BYTES) * TWO_32 + ((view.getUint32(i * ENTRY_BYTES + 4) & ~0x1ff) >>> 0);
    if (offset === 0 || offset % cs !== 0 || offset >= file.size()) continue;
    block.fill(0);
    file.read(offset, block);
    const count = Math.min(perBlock, fileClusters - i * perBlock);
    for (let k = 0; k < count && inUse < threshold; k++) if (readRefcountSaturating(block, k, geo.refcountBits) !== 0) inUse++;
  }
  return inUse >= threshold;
}
