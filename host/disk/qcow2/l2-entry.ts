/**
 * L1 and L2 table entries: decoding and encoding. Layout from QEMU's docs/interop/qcow2.rst
 * ("Cluster mapping"), summarised in shared/reference/cow-disks.md section 2.3.
 *
 * An entry is a big-endian u64. Hot paths read it as two u32 halves (`hi` = bits 32-63, `lo` =
 * bits 0-31) through a DataView, so no BigInt is made per lookup; every function here takes
 * the halves.
 */

/** Bytes per L1 or L2 entry (standard, not extended, L2 entries). */
export const ENTRY_BYTES = 8;

/** Bit 63, in `hi`: the cluster's refcount is exactly 1, so it may be written in place. */
export const COPIED_BIT = 0x80000000;
/** Bit 62, in `hi`: the L2 entry describes compressed data. */
export const COMPRESSED_BIT = 0x40000000;
/** Bit 0, in `lo`: the cluster reads as zeros (version 3 only). */
export const ZERO_BIT = 0x00000001;

/** Bits 9-31 of the host offset, in `lo`. */
const OFFSET_LO_MASK = 0xfffffe00;
/** Bits 32-55 of the host offset, in `hi`. */
const OFFSET_HI_MASK = 0x00ffffff;
/** A standard L2 entry's reserved bits 1-8, in `lo`. */
const L2_RESERVED_LO = 0x000001fe;
/** A standard L2 entry's reserved bits 56-61, in `hi`. */
const L2_RESERVED_HI = 0x3f000000;
/** An L1 entry's reserved bits 0-8, in `lo`. */
const L1_RESERVED_LO = 0x000001ff;
/** An L1 entry's reserved bits 56-62, in `hi`. */
const L1_RESERVED_HI = 0x7f000000;
/** Bits 0-61 of `hi`'s half of a compressed descriptor. */
const DESCRIPTOR_HI_MASK = 0x3fffffff;
/** Compressed data is measured in 512-byte sectors. */
export const COMPRESSED_SECTOR = 512;
const TWO_32 = 0x100000000;

/**
 * The big-endian u32 at byte `at` of `bytes`: an entry's `hi` at its offset, its `lo` 4 bytes on.
 * Byte arithmetic rather than DataView.getUint32, which costs several times more on
 * JavaScriptCore (Bun) and no less on V8.
 */
export function readU32(bytes: Uint8Array, at: number): number {
  return ((bytes[at] << 24) | (bytes[at + 1] << 16) | (bytes[at + 2] << 8) | bytes[at + 3]) >>> 0;
}

/** What an L2 entry says its guest cluster holds (QEMU's QCow2ClusterType). */
export const L2Kind = {
  /** No entry: read the backing file (or zeros). */
  Unallocated: 0,
  /** Data at a host offset. */
  Normal: 1,
  /** Reads as zeros; no host cluster (v3 ZERO flag, offset 0). */
  ZeroPlain: 2,
  /** Reads as zeros; a host cluster is still allocated to it (v3 ZERO flag with an offset). */
  ZeroAllocated: 3,
  /** Deflated data described by a compressed descriptor. */
  Compressed: 4,
} as const;
/** One of {@link L2Kind}'s values. */
export type L2Kind = (typeof L2Kind)[keyof typeof L2Kind];

/** The host offset (bits 9-55) of an L1 entry or a standard L2 entry. */
export function entryOffset(hi: number, lo: number): number {
  return (hi & OFFSET_HI_MASK) * TWO_32 + ((lo & OFFSET_LO_MASK) >>> 0);
}

/**
 * The host offset of a plain data entry (standard, not compressed, no ZERO flag, no reserved bits,
 * offset not 0), or -1 for any other entry: one check for the read fast path.
 */
export function plainDataOffset(hi: number, lo: number): number {
  if ((hi & (COMPRESSED_BIT | L2_RESERVED_HI)) !== 0 || (lo & (ZERO_BIT | L2_RESERVED_LO)) !== 0) return -1;
  const offset = (hi & OFFSET_HI_MASK) * TWO_32 + (lo >>> 0);
  return offset === 0 ? -1 : offset;
}

/** True if bit 63 (COPIED) is set. */
export function isCopied(hi: number): boolean {
  return (hi & COPIED_BIT) !== 0;
}

/** True if bit 62 (COMPRESSED) is set (L2 entries only). */
export function isCompressed(hi: number): boolean {
  return (hi & COMPRESSED_BIT) !== 0;
}

/** True if bit 0 (ZERO) is set (standard L2 entries only). */
export function hasZeroFlag(lo: number): boolean {
  return (lo & ZERO_BIT) !== 0;
}

/** True if a standard (uncompressed) L2 entry has reserved bits set: the image is corrupt. */
export function l2ReservedBitsSet(hi: number, lo: number): boolean {
  return (lo & L2_RESERVED_LO) !== 0 || (hi & L2_RESERVED_HI) !== 0;
}

/** True if an L1 entry has reserved bits set: the image is corrupt. */
export function l1ReservedBitsSet(hi: number, lo: number): boolean {
  return (lo & L1_RESERVED_LO) !== 0 || (hi & L1_RESERVED_HI) !== 0;
}

/**
 * The kind of an L2 entry. A ZERO flag is only meaningful in version 3; callers reading a
 * version 2 image must treat {@link hasZeroFlag} on a non-compressed entry as corruption.
 */
export function l2Kind(hi: number, lo: number): L2Kind {
  if ((hi & COMPRESSED_BIT) !== 0) return L2Kind.Compressed;
  const offset = entryOffset(hi, lo);
  if ((lo & ZERO_BIT) !== 0) return offset === 0 ? L2Kind.ZeroPlain : L2Kind.ZeroAllocated;
  return offset === 0 ? L2Kind.Unallocated : L2Kind.Normal;
}

/** Bit x of the compressed descriptor, where its sector count starts: x = 62 - (cluster_bits - 8). */
export function compressedOffsetBits(clusterBits: number): number {
  return 62 - (clusterBits - 8);
}

/**
 * The host byte offset (unaligned) of a compressed cluster's data: descriptor bits 0..x-1. For
 * cluster_bits 9..21, x is 49..61, so the offset's high part is bits 32..x-1 of `hi`. A value
 * past 2^53 loses precision but is then far past any file's end, which callers check.
 */
export function compressedOffset(hi: number, lo: number, clusterBits: number): number {
  const highBits = compressedOffsetBits(clusterBits) - 32;
  return (hi & ((1 << highBits) - 1)) * TWO_32 + (lo >>> 0);
}

/**
 * The bytes of a compressed cluster's data, from its offset: descriptor bits x..61 count the
 * 512-byte sectors after the first, and the first sector starts at the offset's sector.
 */
export function compressedByteLength(hi: number, lo: number, clusterBits: number): number {
  const highBits = compressedOffsetBits(clusterBits) - 32;
  const sectors = ((hi & DESCRIPTOR_HI_MASK) >>> highBits) + 1;
  return sectors * COMPRESSED_SECTOR - (lo & (COMPRESSED_SECTOR - 1));
}

/** Writes a standard entry (L1, or L2 for data) at byte `at`: `offset` (cluster-aligned, or 0) and flags. */
export function writeEntry(table: DataView, at: number, offset: number, copied: boolean, zero = false): void {
  const hi = Math.floor(offset / TWO_32);
  const lo = offset - hi * TWO_32;
  table.setUint32(at, ((copied ? COPIED_BIT : 0) | hi) >>> 0);
  table.setUint32(at + 4, (lo | (zero ? ZERO_BIT : 0)) >>> 0);
}
