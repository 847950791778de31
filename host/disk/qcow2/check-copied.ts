/**
 * The COPIED flag (bit 63) of the active L1 and L2 entries: set exactly when the cluster's refcount
 * is 1, so a writer may overwrite it in place (cow-disks.md 2.3). Snapshot tables do not keep it
 * accurate, so only the active L1 and the L2 tables it reaches are checked, against the refcounts
 * the image stores. Compressed entries must never have it.
 *
 * A COPIED flag set on a shared cluster would let a write change a snapshot, so repair always
 * follows the refcounts.
 */

import { type BlockFile, readExact } from "../block-file.ts";
import { type Findings, entryHex } from "./check-findings.ts";
import type { Qcow2Header } from "./header.ts";
import { COPIED_BIT, ENTRY_BYTES, L2Kind, entryOffset, isCompressed, isCopied, l2Kind } from "./l2-entry.ts";
import { entriesInFile, forEachEntry } from "./check-scan.ts";

/** The most L1 entries rewritten in one write (1 MiB). */
const RUN_ENTRIES = 1 << 17;

/**
 * Checks the COPIED flags of the active tables against `refcountOf` (a host cluster's refcount),
 * recording each wrong one in `findings`; with `repair`, also rewrites them (the caller syncs).
 */
export function checkCopiedFlags(file: BlockFile, header: Qcow2Header, refcountOf: (cluster: number) => number, findings: Findings, repair: boolean): void {
  const cs = 2 ** header.clusterBits;
  const fileSize = file.size();
  const verb = repair ? "Repairing" : "ERROR";
  const l1Fixes: number[] = [];
  const activeL2 = new Map<number, number>();
  forEachEntry(file, header.l1TableOffset, entriesInFile(header.l1TableOffset, header.l1Size, fileSize), (index, hi, lo) => {
    const l2 = entryOffset(hi, lo);
    if (l2 === 0) return;
    const refcount = refcountOf(Math.floor(l2 / cs));
    if ((refcount === 1) !== isCopied(hi)) {
      findings.error(() => `${verb} OFLAG_COPIED L2 cluster: l1_index=${index} l1_entry=${entryHex(hi, lo)} refcount=${refcount}`);
      if (repair) l1Fixes.push(index);
    }
    // Tables the scan could not read were reported there.
    if (l2 % cs === 0 && l2 < fileSize) activeL2.set(l2 / cs, (activeL2.get(l2 / cs) ?? 0) + 1);
  });
  flipL1Entries(file, header.l1TableOffset, l1Fixes);

  const table = new Uint8Array(cs);
  const view = new DataView(table.buffer);
  for (const cluster of [...activeL2.keys()].sort((a, b) => a - b)) {
    // Each L1 entry that reaches a table is one more path to every wrong flag in it.
    const times = activeL2.get(cluster) ?? 0;
    table.fill(0);
    file.read(cluster * cs, table);
    let changed = false;
    for (let i = 0; i < cs / ENTRY_BYTES; i++) {
      const hi = view.getUint32(i * ENTRY_BYTES);
      const lo = view.getUint32(i * ENTRY_BYTES + 4);
      if ((hi | lo) === 0) continue;
      if (isCompressed(hi)) {
        // The scan reported a COPIED flag here; only repair acts on it.
        if (repair && isCopied(hi)) {
          view.setUint32(i * ENTRY_BYTES, (hi ^ COPIED_BIT) >>> 0);
          changed = true;
        }
        continue;
      }
      const kind = l2Kind(hi, lo);
      if (kind !== L2Kind.Normal && kind !== L2Kind.ZeroAllocated) continue;
      const refcount = refcountOf(Math.floor(entryOffset(hi, lo) / cs));
      if ((refcount === 1) === isCopied(hi)) continue;
      findings.error(() => `${verb} OFLAG_COPIED data cluster: l2_entry=${entryHex(hi, lo)} refcount=${refcount}`, times);
      if (repair) {
        view.setUint32(i * ENTRY_BYTES, (hi ^ COPIED_BIT) >>> 0);
        changed = true;
      }
    }
    if (changed) file.write(cluster * cs, table);
  }
}

/** Flips bit 63 of the L1 entries at `indices` (ascending), one write per run of neighbouring entries. */
function flipL1Entries(file: BlockFile, l1Offset: number, indices: number[]): void {
  for (let first = 0; first < indices.length; ) {
    let last = first;
    while (last + 1 < indices.length && indices[last + 1] === indices[last] + 1 && last - first < RUN_ENTRIES) last++;
    const run = new Uint8Array((last - first + 1) * ENTRY_BYTES);
    const at = l1Offset + indices[first] * ENTRY_BYTES;
    readExact(file, at, run, "L1 table");
    const view = new DataView(run.buffer);
    for (let i = 0; i < run.length; i += ENTRY_BYTES) view.setUint32(i, (view.getUint32(i) ^ COPIED_BIT) >>> 0);
    file.write(at, run);
    first = last + 1;
  }
}
