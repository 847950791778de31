/**
 * Creating a qcow2 image: version 3, 16-bit refcounts, laid out as QEMU lays out a new image
 * (header cluster, refcount table, refcount block(s), L1 table), so a 64 KiB-cluster image has
 * its refcount table at 0x10000 and its L1 table at 0x30000 (cow-disks.md section 2.1).
 */

import { ErrorCode, TandemError } from "../../errors.ts";
import type { BlockFile } from "../block-file.ts";
import type { DiskCreateOptions } from "../format.ts";
import {
  Compatible,
  MAX_BACKING_NAME,
  MAX_CLUSTER_BITS,
  MAX_L1_BYTES,
  MIN_CLUSTER_BITS,
  V3_HEADER_LENGTH,
  l1EntriesFor,
  serializeHeader,
  type Qcow2Header,
} from "./header.ts";
import { ENTRY_BYTES } from "./l2-entry.ts";
import { writeRefcount } from "./refcount-entry.ts";

/** QEMU's default cluster size. */
export const DEFAULT_CLUSTER_SIZE = 64 * 1024;
/** refcount_order of new images: 16-bit refcounts, QEMU's default. */
const REFCOUNT_ORDER = 4;
/** A qcow2 virtual size is a whole number of 512-byte sectors; other sizes round up, as qemu-img create does. */
const SECTOR = 512;

/** Writes a new, empty version 3 image into the empty `file`. Bad options fail with E_BAD_ARGUMENT. */
export function createQcow2(file: BlockFile, requested: DiskCreateOptions): void {
  const options = { ...requested, size: Math.ceil(requested.size / SECTOR) * SECTOR };
  const clusterSize = options.clusterSize ?? DEFAULT_CLUSTER_SIZE;
  const clusterBits = Math.log2(clusterSize);
  if (!Number.isInteger(clusterBits) || clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw new TandemError(ErrorCode.BadArgument, `qcow2 cluster size ${clusterSize} must be a power of two from ${2 ** MIN_CLUSTER_BITS} to ${2 ** MAX_CLUSTER_BITS} bytes`);
  }
  if (options.backingFormat !== undefined && options.backingFile === undefined) {
    throw new TandemError(ErrorCode.BadArgument, "a backing format was given without a backing file");
  }
  if (options.backingFile !== undefined) {
    const length = new TextEncoder().encode(options.backingFile).length;
    if (length === 0 || length > MAX_BACKING_NAME) throw new TandemError(ErrorCode.BadArgument, `backing file name must be 1 to ${MAX_BACKING_NAME} bytes, not ${length}`);
  }
  const l1Size = l1EntriesFor(options.size, clusterBits);
  if (l1Size * ENTRY_BYTES > MAX_L1_BYTES) {
    throw new TandemError(ErrorCode.BadArgument, `a ${options.size}-byte disk needs an L1 table over QEMU's ${MAX_L1_BYTES}-byte limit with ${clusterSize}-byte clusters; use larger clusters`);
  }

  const l1Clusters = Math.ceil((l1Size * ENTRY_BYTES) / clusterSize);
  const refcountBits = 2 ** REFCOUNT_ORDER;
  const perBlock = (clusterSize * 8) / refcountBits;
  // The refcount table and blocks must count themselves: settle their sizes together.
  let tableClusters = 1;
  let blocks = 1;
  for (;;) {
    const total = 1 + tableClusters + blocks + l1Clusters;
    const needBlocks = Math.ceil(total / perBlock);
    const needTable = Math.ceil((needBlocks * ENTRY_BYTES) / clusterSize);
    if (needBlocks <= blocks && needTable <= tableClusters) break;
    blocks = Math.max(blocks, needBlocks);
    tableClusters = Math.max(tableClusters, needTable);
  }
  const total = 1 + tableClusters + blocks + l1Clusters;

  const header: Qcow2Header = {
    version: 3,
    clusterBits,
    size: options.size,
    cryptMethod: 0,
    l1Size,
    l1TableOffset: (1 + tableClusters + blocks) * clusterSize,
    refcountTableOffset: clusterSize,
    refcountTableClusters: tableClusters,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: 0n,
    compatibleFeatures: options.lazyRefcounts === true ? Compatible.LazyRefcounts : 0n,
    autoclearFeatures: 0n,
    refcountOrder: REFCOUNT_ORDER,
    headerLength: V3_HEADER_LENGTH,
    compressionType: 0,
    unknownExtensions: [],
  };
  if (options.backingFile !== undefined) header.backingFile = options.backingFile;
  if (options.backingFormat !== undefined) header.backingFormat = options.backingFormat;

  const table = new Uint8Array(tableClusters * clusterSize);
  const tableView = new DataView(table.buffer);
  const refcounts = new Uint8Array(blocks * clusterSize);
  for (let block = 0; block < blocks; block++) {
    tableView.setBigUint64(block * ENTRY_BYTES, BigInt((1 + tableClusters + block) * clusterSize));
  }
  for (let cluster = 0; cluster < total; cluster++) {
    writeRefcount(refcounts.subarray(Math.floor(cluster / perBlock) * clusterSize), cluster % perBlock, refcountBits, 1);
  }
  file.write(0, serializeHeader(header));
  file.write(clusterSize, table);
  file.write((1 + tableClusters) * clusterSize, refcounts);
  file.truncate(total * clusterSize);
}
