/**
 * One refcount entry inside a qcow2 refcount block, for every refcount width qcow2 allows
 * (refcount_order 0..6: 1 to 64 bits), and where a host cluster's entry lives.
 *
 * Layout (QEMU's docs/interop/qcow2.rst, "Host cluster management"; shared/reference/cow-disks.md
 * 2.4): a refcount block is a cluster of packed entries. Entries narrower than a byte are packed
 * from the least significant bit of each byte (entry 0 of a 1-bit block is bit 0 of byte 0);
 * 8-bit entries are bytes; 16-, 32- and 64-bit entries are big-endian integers.
 *
 * Widths up to 32 bits use plain number arithmetic (no BigInt) because check and allocation read
 * millions of entries.
 */

import { ErrorCode, TandemError } from "../../errors.ts";
import type { Qcow2Geometry } from "./header.ts";

/** 2^32, to split and join the halves of a 64-bit entry. */
const TWO_32 = 0x1_0000_0000;
/** The largest high half of a 64-bit entry whose value is still a safe integer (2^53 - 1). */
const MAX_SAFE_HIGH = 0x1f_ffff;

/** Where a host cluster's refcount lives. */
export interface RefcountPosition {
  /** Index into the refcount table: which refcount block. */
  tableIndex: number;
  /** Index of the entry inside that refcount block. */
  blockIndex: number;
}

/**
 * The refcount table index and refcount block index of host cluster `cluster` (a cluster number,
 * not a byte offset). Uses division rather than shifts: cluster numbers can exceed 2^32.
 */
export function refcountPosition(cluster: number, geometry: Pick<Qcow2Geometry, "refcountBlockEntries">): RefcountPosition {
  const entries = geometry.refcountBlockEntries;
  return { tableIndex: Math.floor(cluster / entries), blockIndex: cluster % entries };
}

/**
 * The refcount at entry `index` of `block`, whose entries are `refcountBits` wide (1, 2, 4, 8,
 * 16, 32 or 64). `index` must be below the block's entry count (the caller's loop bound). A
 * 64-bit entry above Number.MAX_SAFE_INTEGER fails with E_DISK_FORMAT (`source` names the file
 * and block in the message).
 */
export function readRefcount(block: Uint8Array, index: number, refcountBits: number, source = "refcount block"): number {
  switch (refcountBits) {
    case 8:
      return block[index];
    case 16: {
      const at = index * 2;
      return (block[at] << 8) | block[at + 1];
    }
    case 32: {
      const at = index * 4;
      return block[at] * 0x100_0000 + ((block[at + 1] << 16) | (block[at + 2] << 8) | block[at + 3]);
    }
    case 64: {
      const at = index * 8;
      const high = block[at] * 0x100_0000 + ((block[at + 1] << 16) | (block[at + 2] << 8) | block[at + 3]);
      const low = block[at + 4] * 0x100_0000 + ((block[at + 5] << 16) | (block[at + 6] << 8) | block[at + 7]);
      if (high > MAX_SAFE_HIGH) {
        throw new TandemError(ErrorCode.DiskFormat, `${source}: 64-bit refcount entry ${index} is over 2^53 - 1 (corrupt refcount block)`);
      }
      return high * TWO_32 + low;
    }
    default: {
      // 1, 2 or 4 bits: several entries per byte, the first in the low bits.
      const bit = index * refcountBits;
      return (block[bit >>> 3] >>> (bit & 7)) & ((1 << refcountBits) - 1);
    }
  }
}

/**
 * As {@link readRefcount}, but a 64-bit entry above Number.MAX_SAFE_INTEGER reads as
 * Number.MAX_SAFE_INTEGER: for a check, which reports a wrong refcount rather than stopping at it
 * (a "refcount block" that is really an L2 table or data is full of such values).
 */
export function readRefcountSaturating(block: Uint8Array, index: number, refcountBits: number): number {
  if (refcountBits === 64 && block[index * 8] * 0x100_0000 + ((block[index * 8 + 1] << 16) | (block[index * 8 + 2] << 8) | block[index * 8 + 3]) > MAX_SAFE_HIGH) {
    return Number.MAX_SAFE_INTEGER;
  }
  return readRefcount(block, index, refcountBits);
}

/**
 * Stores `value` at entry `index` of `block` (entries `refcountBits` wide), leaving every other
 * entry untouched. A value that is not an integer in 0..2^refcountBits - 1 (at most
 * Number.MAX_SAFE_INTEGER) fails with E_OUT_OF_RANGE: a refcount must never wrap.
 */
export function writeRefcount(block: Uint8Array, index: number, refcountBits: number, value: number): void {
  const max = refcountBits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** refcountBits - 1;
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new TandemError(ErrorCode.OutOfRange, `refcount ${value} does not fit a ${refcountBits}-bit refcount entry (0..${max})`);
  }
  switch (refcountBits) {
    case 8:
      block[index] = value;
      return;
    case 16: {
      const at = index * 2;
      block[at] = value >>> 8;
      block[at + 1] = value;
      return;
    }
    case 32:
      putU32(block, index * 4, value);
      return;
    case 64: {
      const at = index * 8;
      putU32(block, at, Math.floor(value / TWO_32));
      putU32(block, at + 4, value >>> 0);
      return;
    }
    default: {
      const bit = index * refcountBits;
      const shift = bit & 7;
      const mask = ((1 << refcountBits) - 1) << shift;
      const at = bit >>> 3;
      block[at] = (block[at] & ~mask) | (value << shift);
    }
  }
}

/** Big-endian u32 at `at`; `value` is 0..2^32 - 1. */
function putU32(block: Uint8Array, at: number, value: number): void {
  block[at] = value >>> 24;
  block[at + 1] = value >>> 16;
  block[at + 2] = value >>> 8;
  block[at + 3] = value;
}
