/**
 * Builds the {@link MetadataIndex} of an image being opened: the header, the active L1 table and
 * the L2 tables it names; for a writer also the refcount table and its blocks, the snapshot table,
 * the snapshots' L1 tables and their L2 tables (QEMU's default overlap checks, "cached" mode, plus
 * the inactive L2 tables). Entries that are malformed (unaligned, reserved bits) are left out: no
 * lookup follows them, so no write can reach what they name.
 */

import type { BlockFile } from "../block-file.ts";
import { entriesInFile, forEachEntry } from "./check-scan.ts";
import { readSnapshotTable } from "./check-snapshots.ts";
import type { Qcow2Header } from "./header.ts";
import { ENTRY_BYTES, entryOffset, l1ReservedBitsSet, readU32 } from "./l2-entry.ts";
import { Metadata, MetadataIndex } from "./metadata-index.ts";

const TWO_32 = 0x1_0000_0000;
/** A refcount table entry's reserved bits 0-8. */
const REFTABLE_RESERVED_LO = 0x1ff;

/**
 * The metadata of `header`'s image. `refcountTable` is null for a reader (which writes nothing,
 * so only L2 lookups consult the index); a writer passes it, and the snapshots are indexed too.
 */
export function indexMetadata(file: BlockFile, header: Qcow2Header, l1: Uint8Array, refcountTable: Uint8Array | null): MetadataIndex {
  const cs = 2 ** header.clusterBits;
  const index = new MetadataIndex(cs);
  index.setRange(Metadata.ActiveL1, header.l1TableOffset, header.l1Size * ENTRY_BYTES);
  index.setRange(Metadata.RefcountTable, header.refcountTableOffset, header.refcountTableClusters * cs);
  const addTables = (table: Uint8Array, kind: number): void => {
    for (let at = 0; at + ENTRY_BYTES <= table.length; at += ENTRY_BYTES) addTable(readU32(table, at), readU32(table, at + 4), kind);
  };
  const addTable = (hi: number, lo: number, kind: number): void => {
    const offset = entryOffset(hi, lo);
    if (offset !== 0 && offset % cs === 0 && !l1ReservedBitsSet(hi, lo)) index.addCluster(offset / cs, kind);
  };
  addTables(l1, Metadata.ActiveL2);
  if (refcountTable === null) return index;

  for (let at = 0; at + ENTRY_BYTES <= refcountTable.length; at += ENTRY_BYTES) {
    const lo = readU32(refcountTable, at + 4);
    const offset = readU32(refcountTable, at) * TWO_32 + lo;
    if (offset !== 0 && (lo & REFTABLE_RESERVED_LO) === 0 && offset % cs === 0) index.addCluster(offset / cs, Metadata.RefcountBlock);
  }
  if (header.nbSnapshots === 0) return index;
  const snapshots = readSnapshotTable(file, header);
  index.setRange(Metadata.SnapshotTable, header.snapshotsOffset, snapshots.bytes);
  const fileSize = file.size();
  // Snapshots may share an L1 table: read each once, and never more L1 bytes than the file has.
  const seen = new Set<string>();
  let budget = fileSize;
  for (const snapshot of snapshots.entries) {
    const key = `${snapshot.l1Offset}:${snapshot.l1Size}`;
    if (snapshot.l1Size === 0 || snapshot.l1Offset % cs !== 0 || seen.has(key)) continue;
    seen.add(key);
    index.addRange(Metadata.InactiveL1, snapshot.l1Offset, snapshot.l1Size * ENTRY_BYTES);
    const entries = Math.min(entriesInFile(snapshot.l1Offset, snapshot.l1Size, fileSize), Math.floor(budget / ENTRY_BYTES));
    budget -= entries * ENTRY_BYTES;
    forEachEntry(file, snapshot.l1Offset, entries, (_, hi, lo) => addTable(hi, lo, Metadata.InactiveL2));
  }
  return index;
}
