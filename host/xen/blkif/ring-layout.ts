/**
 * Byte layouts of the Xen block ring, from xen/include/public/io/ring.h (the shared ring) and
 * xen/include/public/io/blkif.h (requests and responses), checked with gcc -m64 and -m32
 * against Debian libxen-dev's headers (test/support/blkif-frontend.c does it in the tests).
 * Facts: ../shared/reference/xen-blkif.md sections 1-3. All little-endian.
 */

/** The three `protocol` values a frontend may write in xenstore (io/protocols.h, plus "native"). */
export type BlkifProtocol = "native" | "x86_32-abi" | "x86_64-abi";

/** A request layout, as the kernel numbers it (assembly/blkif.ts ABI_X86_32 / ABI_X86_64). */
export const BlkifAbi = {
  /** i386: u64 aligns to 4, so a request is 108 bytes. */
  X86_32: 1,
  /** x86_64 (and arm): u64 aligns to 8, 112 bytes. tandem's "native". */
  X86_64: 2,
} as const;

/** One of the values of {@link BlkifAbi}. */
export type BlkifAbi = (typeof BlkifAbi)[keyof typeof BlkifAbi];

/**
 * The layout a `protocol` string selects. "native" means the backend's own ABI; tandem's is
 * x86_64, as for QEMU built for x86_64.
 */
export function abiForProtocol(protocol: BlkifProtocol): BlkifAbi {
  return protocol === "x86_32-abi" ? BlkifAbi.X86_32 : BlkifAbi.X86_64;
}

/** Bytes of one ring page (XEN_PAGE_SIZE). */
export const RING_PAGE_SIZE = 4096;
/** Most pages a ring may span: max-ring-page-order 4. */
export const MAX_RING_PAGES = 16;

// ring.h `struct NAME_sring`: four RING_IDX (u32) then padding; entries start at byte 64.
/** Offset of req_prod: written by the frontend. */
export const SRING_REQ_PROD = 0;
/** Offset of req_event: written by the backend ("notify me when req_prod passes this"). */
export const SRING_REQ_EVENT = 4;
/** Offset of rsp_prod: written by the backend. */
export const SRING_RSP_PROD = 8;
/** Offset of rsp_event: written by the frontend. */
export const SRING_RSP_EVENT = 12;
/** Offset of the first ring entry (ring.h: 4 indices, pvt[4], __pad[44]). */
export const SRING_HEADER_SIZE = 64;

/** Field offsets of one request layout (blkif.h struct blkif_request and its variants). */
export interface RequestLayout {
  /** sizeof(union blkif_sring_entry): the ring slot. */
  readonly entrySize: number;
  /** operation u8 (all variants). */
  readonly operation: number;
  /** nr_segments u8 (rw), flag u8 (discard), indirect_op u8 (indirect). */
  readonly nrSegments: number;
  /** handle u16 (rw, discard); nr_segments u16 on indirect. */
  readonly handle: number;
  /** id u64. */
  readonly id: number;
  /** sector_number u64. */
  readonly sectorNumber: number;
  /** seg[11] of 8 bytes each (rw). */
  readonly segments: number;
  /** nr_sectors u64 (discard). */
  readonly discardNrSectors: number;
  /** handle u16 (indirect). */
  readonly indirectHandle: number;
  /** indirect_grefs[8] u32 (indirect). */
  readonly indirectGrefs: number;
  /** sizeof(struct blkif_response). */
  readonly responseSize: number;
}

/** blkif.h under i386 (gcc -m32): u64 fields align to 4. */
export const X86_32_LAYOUT: RequestLayout = {
  entrySize: 108,
  operation: 0,
  nrSegments: 1,
  handle: 2,
  id: 4,
  sectorNumber: 12,
  segments: 20,
  discardNrSectors: 20,
  indirectHandle: 20,
  indirectGrefs: 24,
  responseSize: 12,
};

/** blkif.h under x86_64: `id` aligns to 8, so everything after `handle` is 4 bytes later. */
export const X86_64_LAYOUT: RequestLayout = {
  entrySize: 112,
  operation: 0,
  nrSegments: 1,
  handle: 2,
  id: 8,
  sectorNumber: 16,
  segments: 24,
  discardNrSectors: 24,
  indirectHandle: 24,
  indirectGrefs: 28,
  responseSize: 16,
};

/** The request layout of an ABI. */
export function layoutFor(abi: BlkifAbi): RequestLayout {
  return abi === BlkifAbi.X86_32 ? X86_32_LAYOUT : X86_64_LAYOUT;
}

// blkif.h struct blkif_request_segment: 8 bytes.
/** Bytes of one segment. */
export const SEGMENT_SIZE = 8;
/** Offset of gref (grant_ref_t, u32) in a segment. */
export const SEGMENT_GREF = 0;
/** Offset of first_sect (u8) in a segment. */
export const SEGMENT_FIRST_SECT = 4;
/** Offset of last_sect (u8) in a segment. */
export const SEGMENT_LAST_SECT = 5;

// blkif.h struct blkif_response: the same offsets on both ABIs; only the tail padding differs.
/** Offset of id (u64) in a response. */
export const RESPONSE_ID = 0;
/** Offset of operation (u8) in a response. */
export const RESPONSE_OPERATION = 8;
/** Offset of status (i16) in a response. */
export const RESPONSE_STATUS = 10;

/** blkif.h BLKIF_OP_*. */
export const BlkifOp = {
  Read: 0,
  Write: 1,
  WriteBarrier: 2,
  FlushDiskcache: 3,
  /** BLKIF_OP_RESERVED_1: SLES device-specific, never accepted. */
  Reserved1: 4,
  Discard: 5,
  Indirect: 6,
} as const;

/** blkif.h BLKIF_RSP_*: the status of a response (i16). */
export const BlkifStatus = {
  Okay: 0,
  Error: -1,
  EOpNotSupp: -2,
} as const;

/** BLKIF_MAX_SEGMENTS_PER_REQUEST. */
export const MAX_SEGMENTS_PER_REQUEST = 11;
/** BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST. */
export const MAX_INDIRECT_PAGES_PER_REQUEST = 8;
/** Segments per indirect page: 4096 / 8. */
export const SEGMENTS_PER_INDIRECT_PAGE = 512;
/** BLKIF_DISCARD_SECURE, bit 0 of a discard's flag. */
export const DISCARD_SECURE = 1;
/** sector_number, first_sect and last_sect count 512-byte sectors whatever sector-size says. */
export const BLKIF_SECTOR_SIZE = 512;

/**
 * Entries of a ring of `pages` pages for an ABI: ring.h __RING_SIZE, the largest power of two of
 * entries that fits after the header (__RD32). 32 per page for both ABIs.
 */
export function ringEntries(pages: number, abi: BlkifAbi): number {
  const fit = Math.floor((pages * RING_PAGE_SIZE - SRING_HEADER_SIZE) / layoutFor(abi).entrySize);
  return fit <= 0 ? 0 : 1 << (31 - Math.clz32(fit));
}
