/**
 * The internal snapshot table, as far as a check needs it: where each snapshot's L1 table is and
 * how many bytes the table takes. Layout from qcow2.rst "Snapshots" (cow-disks.md 2.5); every
 * entry starts 8-byte aligned.
 */

import { type BlockFile, readExact } from "../block-file.ts";
import { ErrorCode, TandemError } from "../../errors.ts";
import type { Qcow2Header } from "./header.ts";

/** u64 offset of the snapshot's L1 table. */
const SN_L1_TABLE_OFFSET = 0;
/** u32 entries in the snapshot's L1 table. */
const SN_L1_SIZE = 8;
/** u16 length of the id string. */
const SN_ID_LENGTH = 12;
/** u16 length of the name string. */
const SN_NAME_LENGTH = 14;
/** u32 bytes of extra data after the fixed part. */
const SN_EXTRA_DATA_SIZE = 36;
/** The fixed part; extra data, id and name follow. */
const SN_FIXED_BYTES = 40;
/** QEMU's limits (block/qcow2.h): snapshots, extra data per entry, and the whole table. */
const MAX_SNAPSHOTS = 65536;
const MAX_SNAPSHOT_EXTRA_DATA = 1024;
const MAX_SNAPSHOT_TABLE_BYTES = 64 << 20;
const TWO_32 = 0x1_0000_0000;

/** Version 3 entries must carry at least the 64-bit VM state size and the disk size as extra data. */
export const V3_MIN_SNAPSHOT_EXTRA_DATA = 16;

/** One snapshot table entry. */
export interface SnapshotEntry {
  id: string;
  l1Offset: number;
  l1Size: number;
  extraDataSize: number;
}

/**
 * Parses the snapshot table of `header`'s image. Fails with E_DISK_FORMAT where QEMU refuses to
 * open the image (too many snapshots, too much extra data, a table over QEMU's limit) or the table
 * runs past the end of the file. Each entry's length is checked against the file before the next
 * is read, so the work is bounded by the file.
 */
export function readSnapshotTable(file: BlockFile, header: Qcow2Header): { entries: SnapshotEntry[]; bytes: number } {
  const bad = (what: string) => new TandemError(ErrorCode.DiskFormat, `${file.path}: ${what}`);
  if (header.nbSnapshots === 0) return { entries: [], bytes: 0 };
  if (header.nbSnapshots > MAX_SNAPSHOTS) throw bad(`${header.nbSnapshots} snapshots is over QEMU's limit of ${MAX_SNAPSHOTS}`);
  const fileSize = file.size();
  const entries: SnapshotEntry[] = [];
  const fixed = new Uint8Array(SN_FIXED_BYTES);
  const view = new DataView(fixed.buffer);
  let at = header.snapshotsOffset;
  for (let s = 0; s < header.nbSnapshots; s++) {
    at = Math.ceil(at / 8) * 8;
    readExact(file, at, fixed, `snapshot table entry ${s}`);
    const extra = view.getUint32(SN_EXTRA_DATA_SIZE);
    if (extra > MAX_SNAPSHOT_EXTRA_DATA) throw bad(`snapshot table entry ${s} has ${extra} bytes of extra data (QEMU allows ${MAX_SNAPSHOT_EXTRA_DATA})`);
    const id = new Uint8Array(view.getUint16(SN_ID_LENGTH));
    readExact(file, at + SN_FIXED_BYTES + extra, id, `snapshot table entry ${s}'s id`);
    entries.push({
      id: new TextDecoder().decode(id),
      l1Offset: view.getUint32(SN_L1_TABLE_OFFSET) * TWO_32 + view.getUint32(SN_L1_TABLE_OFFSET + 4),
      l1Size: view.getUint32(SN_L1_SIZE),
      extraDataSize: extra,
    });
    at += SN_FIXED_BYTES + extra + id.length + view.getUint16(SN_NAME_LENGTH);
    if (at > fileSize) throw bad(`snapshot table entry ${s} runs past the end of the file`);
    if (at - header.snapshotsOffset > MAX_SNAPSHOT_TABLE_BYTES) throw bad(`the snapshot table is over QEMU's ${MAX_SNAPSHOT_TABLE_BYTES}-byte limit`);
  }
  return { entries, bytes: at - header.snapshotsOffset };
}
