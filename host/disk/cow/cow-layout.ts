/**
 * The byte layout of tandem's copy-on-write overlay format "cow", as docs/cow-format.md
 * specifies it (after dm-userspace's dscow: a header, an allocation bitmap, then data blocks
 * mapped one to one). Every integer is little-endian.
 */

/** The first 8 bytes of every cow image: "TNDMCOW\0". */
export const COW_MAGIC = new Uint8Array([0x54, 0x4e, 0x44, 0x4d, 0x43, 0x4f, 0x57, 0x00]);
/** The only version this reader knows. */
export const COW_VERSION = 1;

// Header field offsets (docs/cow-format.md, "Header").
/** 8 bytes: {@link COW_MAGIC}. */
export const H_MAGIC = 0;
/** u32 format version. */
export const H_VERSION = 8;
/** u32 bytes of the header area, covered by the checksum. */
export const H_HEADER_SIZE = 12;
/** u32 feature flags; version 1 defines none. */
export const H_FLAGS = 16;
/** u32 log2 of the block size. */
export const H_BLOCK_BITS = 20;
/** u64 virtual size in bytes. */
export const H_VIRTUAL_SIZE = 24;
/** u64 file offset of the block-state bitmap. */
export const H_BITMAP_OFFSET = 32;
/** u64 length of the bitmap in bytes. */
export const H_BITMAP_LENGTH = 40;
/** u64 file offset of block 0's data; block i lies at data offset + i × block size. */
export const H_DATA_OFFSET = 48;
/** u32 file offset of the base image's name (inside the header area). */
export const H_BASE_NAME_OFFSET = 56;
/** u32 length of the base image's name in bytes; 0 = no base. */
export const H_BASE_NAME_LENGTH = 60;
/** 16 bytes: the base image's format name, ASCII, NUL-padded; all NUL = probe it. */
export const H_BASE_FORMAT = 64;
/** u32 CRC-32 of the header area with this field read as zero. */
export const H_CHECKSUM = 80;
/** Reserved bytes up to {@link H_FIXED_END}; must be zero. */
export const H_RESERVED = 84;
/** The end of the fixed fields; the base name may start here. */
export const H_FIXED_END = 128;

/** Bytes of {@link H_BASE_FORMAT}. */
export const BASE_FORMAT_BYTES = 16;
/** The longest base name, in bytes of UTF-8 (as qcow2's backing_file_size). */
export const MAX_BASE_NAME_BYTES = 1023;

/** The header area tandem writes: one 4 KiB page, so the bitmap starts page-aligned. */
export const HEADER_SIZE = 4096;
/** The smallest header area a reader accepts (a sector). */
export const MIN_HEADER_SIZE = 512;
/** The largest header area a reader accepts. */
export const MAX_HEADER_SIZE = 65536;

/** Smallest block: 4 KiB, a guest page. */
export const MIN_BLOCK_BITS = 12;
/** Largest block: 1 MiB; larger blocks make first writes copy too much. */
export const MAX_BLOCK_BITS = 20;
/** The default block: 64 KiB, as qcow2's default cluster. */
export const DEFAULT_BLOCK_BITS = 16;

/** Each block's state takes 2 bits of the bitmap, 4 blocks to a byte, block 0 in the low bits of byte 0. */
export const BLOCKS_PER_BYTE = 4;
/**
 * The bitmap is held in memory whole, so it is bounded: 64 MiB is 2^28 blocks, 1 TiB of 4 KiB
 * blocks or 16 TiB of 64 KiB blocks.
 */
export const MAX_BITMAP_BYTES = 64 * 1024 * 1024;

/** A block's 2-bit state in the bitmap. */
export const BlockState = {
  /** Not in the overlay: read from the base, or zeros without one. */
  Absent: 0,
  /** In the overlay: the block's bytes are at its data offset. */
  Data: 1,
  /** Reads as zeros whatever the base holds; no data is stored. */
  Zero: 2,
  /** Not a state: an image holding it is corrupt. */
  Reserved: 3,
} as const;

/** One of the values of {@link BlockState}. */
export type BlockState = (typeof BlockState)[keyof typeof BlockState];
