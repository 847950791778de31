// The Xen block ring's request parser (blkif, xen/include/public/io/{ring.h,blkif.h}; facts and
// offsets in ../shared/reference/xen-blkif.md sections 1-4 and 8). host/xen/blkif/ring-layout.ts
// names the same offsets for TypeScript; host/xen/blkif/request-parser.ts is the typed caller.
//
// The shared ring: a 64-byte header (req_prod u32 @0, req_event @4, rsp_prod @8, rsp_event @12,
// padding) then `entries` slots, each the union of request and response: 112 bytes on x86_64,
// 108 on x86_32 (where u64 aligns to 4). Indices are free-running u32; a slot is idx & (entries-1).
//
// Request layouts, x86_32 offsets; on x86_64 every field from `id` on sits 4 bytes later (the
// u64 `id` aligns to 8), so one base pointer `p = slot + 4` serves both with the same immediates:
//
//   read/write/flush/barrier  operation u8 @0, nr_segments u8 @1, handle u16 @2, id u64 @4,
//                             sector_number u64 @12, seg[11] @20 (gref u32, first_sect u8,
//                             last_sect u8, 2 pad bytes)
//   discard                   operation @0, flag u8 @1, handle @2, id @4, sector_number @12,
//                             nr_sectors u64 @20
//   indirect                  operation @0, indirect_op u8 @1, nr_segments u16 @2, id @4,
//                             sector_number @12, handle u16 @20, indirect_grefs[8] u32 @24
//
// Single copy (XSA-155, the double fetch): every byte of a request is loaded from the ring once
// into a local, and the locals are both stored into the private record and checked; nothing is
// read from the ring again, so a frontend changing the slot meanwhile cannot make a checked value
// differ from a used one. Callers act on the records only.
//
// Each request becomes one 128-byte record, every byte written (unused fields are zero):
//
//   offset  size  field
//   0       u8    status        REQ_OK or one of the REQ_* errors below
//   1       u8    operation     as sent
//   2       u16   handle
//   4       u16   nr_segments   rw ops: the u8 as sent (even above 11); indirect: the u16; else 0
//   6       u8    indirect_op   indirect only
//   7       u8    flag          discard only (BLKIF_DISCARD_SECURE is bit 0)
//   8       u64   id
//   16      u64   sector_number
//   24      u64   nr_sectors    discard: as sent; rw ops with status OK: the segments' total; else 0
//   32      8*11  segments      rw ops: the first min(nr_segments, 11), each {gref u32, first_sect
//                               u8, last_sect u8, 0 u16}; indirect: indirect_grefs[ceil(n/512) max 8]
//   120     8     zero
//
// Unknown operations copy only operation and id, as Linux blkback does, so the answer can carry it.
//
// The checks (Linux blkback's dispatch_rw_block_io and xen_vbd_translate, QEMU's
// xen_block_parse_request), in order; the first that fails is the record's status:
//   1. the operation is one the backend advertises (REQ_UNSUPPORTED_OP: the host answers
//      BLKIF_RSP_EOPNOTSUPP, as Linux does; every other error answers BLKIF_RSP_ERROR);
//   2. an indirect request's indirect_op is read or write;
//   3. on a read-only disk, only reads (flush too is refused, as Linux and QEMU do);
//   4. read/write carry 1..11 segments, flush/barrier 0..11, indirect 1..the advertised maximum;
//   5. every segment has first_sect <= last_sect <= 7;
//   6. sector_number, first_sect and each length are multiples of the logical sector size;
//   7. sector_number + the sectors (rw) or nr_sectors (discard) neither wraps 2^64 nor passes
//      the disk's end.
// An indirect request's segments live in its indirect pages, which are shared memory too: the
// host copies them once and checks 5-7 on that copy; this kernel checks the header only.
//
// The limits block (private, written by the host once per device):
//
//   offset  size  field
//   0       u64   sectors                 the disk's size in 512-byte sectors (below 2^53, for the twin)
//   8       u32   flags                   bit 0: the disk is read-only
//   12      u32   operations              bit n set: operation n is accepted (the advertised features)
//   16      u32   logical sector size     bytes, a power of two 512..4096 (xenstore sector-size)
//   20      u32   max indirect segments   feature-max-indirect-segments, at most 8 * 512

// @ts-ignore: decorator
@inline const HEADER_SIZE: usize = 64;
// @ts-ignore: decorator
@inline export const ABI_X86_32: u32 = 1;
// @ts-ignore: decorator
@inline export const ABI_X86_64: u32 = 2;

// @ts-ignore: decorator
@inline const OP_READ: u32 = 0;
// @ts-ignore: decorator
@inline const OP_WRITE: u32 = 1;
// @ts-ignore: decorator
@inline const OP_WRITE_BARRIER: u32 = 2;
// @ts-ignore: decorator
@inline const OP_FLUSH_DISKCACHE: u32 = 3;
// @ts-ignore: decorator
@inline const OP_DISCARD: u32 = 5;
// @ts-ignore: decorator
@inline const OP_INDIRECT: u32 = 6;
// @ts-ignore: decorator
@inline const MAX_SEGMENTS: u32 = 11;
// @ts-ignore: decorator
@inline const MAX_INDIRECT_PAGES: u32 = 8;
// @ts-ignore: decorator
@inline const SEGMENTS_PER_INDIRECT_PAGE_SHIFT: u32 = 9; // 4096 / 8-byte segments = 512
// @ts-ignore: decorator
@inline const SECTORS_PER_PAGE: u32 = 8;

// Request fields at the x86_32 offsets (see the top comment for the x86_64 shift).
// @ts-ignore: decorator
@inline const RQ_OPERATION: usize = 0;
// @ts-ignore: decorator
@inline const RQ_NR_SEGMENTS: usize = 1;
// @ts-ignore: decorator
@inline const RQ_HANDLE: usize = 2;
// @ts-ignore: decorator
@inline const RQ_ID: usize = 4;
// @ts-ignore: decorator
@inline const RQ_SECTOR: usize = 12;
// @ts-ignore: decorator
@inline const RQ_SEG: usize = 20;
// @ts-ignore: decorator
@inline const RQ_DISCARD_NR_SECTORS: usize = 20;
// @ts-ignore: decorator
@inline const RQ_INDIRECT_HANDLE: usize = 20;
// @ts-ignore: decorator
@inline const RQ_INDIRECT_GREFS: usize = 24;

// The record.
// @ts-ignore: decorator
@inline export const RECORD_SIZE: usize = 128;
// @ts-ignore: decorator
@inline const R_STATUS: usize = 0;
// @ts-ignore: decorator
@inline const R_OPERATION: usize = 1;
// @ts-ignore: decorator
@inline const R_HANDLE: usize = 2;
// @ts-ignore: decorator
@inline const R_NR_SEGMENTS: usize = 4;
// @ts-ignore: decorator
@inline const R_INDIRECT_OP: usize = 6;
// @ts-ignore: decorator
@inline const R_FLAG: usize = 7;
// @ts-ignore: decorator
@inline const R_ID: usize = 8;
// @ts-ignore: decorator
@inline const R_SECTOR: usize = 16;
// @ts-ignore: decorator
@inline const R_NR_SECTORS: usize = 24;
// @ts-ignore: decorator
@inline const R_SEG: usize = 32;
// @ts-ignore: decorator
@inline const SEGMENT_AREA: usize = 88;

// The limits block.
// @ts-ignore: decorator
@inline const L_SECTORS: usize = 0;
// @ts-ignore: decorator
@inline const L_FLAGS: usize = 8;
// @ts-ignore: decorator
@inline const L_OPERATIONS: usize = 12;
// @ts-ignore: decorator
@inline const L_SECTOR_SIZE: usize = 16;
// @ts-ignore: decorator
@inline const L_MAX_INDIRECT: usize = 20;
// @ts-ignore: decorator
@inline const FLAG_READ_ONLY: u32 = 1;

// Record statuses, in the order they are checked (the first failing check names the error).
// @ts-ignore: decorator
@inline const REQ_OK: u64 = 0;
/** The operation is unknown, reserved, or one this backend does not advertise. */
// @ts-ignore: decorator
@inline const REQ_UNSUPPORTED_OP: u64 = 1;
/** An indirect request whose indirect_op is neither read nor write. */
// @ts-ignore: decorator
@inline const REQ_BAD_INDIRECT_OP: u64 = 2;
/** Anything but a read (or an indirect read) on a read-only disk. */
// @ts-ignore: decorator
@inline const REQ_READ_ONLY: u64 = 3;
/** nr_segments 0 on read/write, above 11, or an indirect count of 0 or above the advertised maximum. */
// @ts-ignore: decorator
@inline const REQ_BAD_SEGMENT_COUNT: u64 = 4;
/** A segment with first_sect > last_sect or last_sect > 7. */
// @ts-ignore: decorator
@inline const REQ_BAD_SEGMENT: u64 = 5;
/** sector_number, first_sect or a segment's length not a multiple of the logical sector size. */
// @ts-ignore: decorator
@inline const REQ_MISALIGNED: u64 = 6;
/** The sectors touched wrap around 2^64 or pass the end of the disk. */
// @ts-ignore: decorator
@inline const REQ_OUT_OF_RANGE: u64 = 7;

/** Returned when the frontend's req_prod is impossible: nothing is consumed. */
// @ts-ignore: decorator
@inline const RING_OVERFLOW: u32 = u32.MAX_VALUE;

/**
 * Parses the requests between `reqCons` and `reqProd` of the ring at `ring` (`entries` slots, a
 * power of two, `abi` ABI_X86_32 or ABI_X86_64), at most `maxRequests`, into records at `out`.
 * `reqProd` is the value the caller read once from the shared header; `rspProdPvt` is the
 * backend's private response producer. Returns the number of records (the new req_cons is
 * reqCons + that, mod 2^32), or RING_OVERFLOW, taking nothing, if the frontend claims more
 * requests than the ring can hold (ring.h RING_REQUEST_PROD_OVERFLOW: reqProd - rspProdPvt >
 * entries, which Linux blkback treats as fatal) or moved reqProd behind reqCons.
 */
export function blkif_parse(
  ring: usize, abi: u32, entries: u32, reqCons: u32, reqProd: u32, rspProdPvt: u32, maxRequests: u32,
  limits: usize, out: usize,
): u32 {
  const claimed = reqProd - rspProdPvt;
  const available = reqProd - reqCons;
  if (claimed > entries || available > claimed) return RING_OVERFLOW;
  const count = min(available, maxRequests);
  const entrySize: usize = abi == ABI_X86_64 ? 112 : 108;
  const shift: usize = abi == ABI_X86_64 ? 4 : 0;
  const mask = entries - 1;
  const slots = ring + HEADER_SIZE;
  const disk = load<u64>(limits, L_SECTORS);
  const readOnly = (load<u32>(limits, L_FLAGS) & FLAG_READ_ONLY) != 0;
  const operations = load<u32>(limits, L_OPERATIONS);
  const alignMask = (load<u32>(limits, L_SECTOR_SIZE) >>> 9) - 1;
  const maxIndirect = load<u32>(limits, L_MAX_INDIRECT);
  for (let i: u32 = 0; i < count; i++) {
    const slot = slots + <usize>((reqCons + i) & mask) * entrySize;
    parseOne(slot, slot + shift, out + (<usize>i << 7), disk, readOnly, operations, alignMask, maxIndirect);
  }
  return count;
}

// @ts-ignore: decorator
@inline function parseOne(
  slot: usize, p: usize, rec: usize, disk: u64, readOnly: bool, operations: u32, alignMask: u32, maxIndirect: u32,
): void {
  const op = <u32>load<u8>(slot, RQ_OPERATION);
  store<u64>(rec, load<u64>(p, RQ_ID), R_ID);
  store<u64>(rec, 0, RECORD_SIZE - 8);
  if (op > 31 || ((operations >>> op) & 1) == 0) {
    store<u64>(rec, 0, R_SECTOR);
    store<u64>(rec, 0, R_NR_SECTORS);
    clearSegmentArea(rec);
    store<u64>(rec, (<u64>op << 8) | REQ_UNSUPPORTED_OP, R_STATUS);
    return;
  }
  const sector = load<u64>(p, RQ_SECTOR);
  store<u64>(rec, sector, R_SECTOR);
  // The record's first 8 bytes, stored at once: status, operation, handle, nr_segments,
  // indirect_op, flag (R_STATUS .. R_FLAG).
  let head = <u64>op << (R_OPERATION << 3);
  let nrSectors: u64 = 0;
  let status = REQ_OK;
  if (op == OP_DISCARD) {
    const flag = <u64>load<u8>(slot, RQ_NR_SEGMENTS);
    const handle = <u64>load<u16>(slot, RQ_HANDLE);
    nrSectors = load<u64>(p, RQ_DISCARD_NR_SECTORS);
    head |= (handle << (R_HANDLE << 3)) | (flag << (R_FLAG << 3));
    clearSegmentArea(rec);
    const end = sector + nrSectors;
    if (readOnly) status = REQ_READ_ONLY;
    else if (end < sector || end > disk) status = REQ_OUT_OF_RANGE;
  } else if (op == OP_INDIRECT) {
    const indirectOp = <u32>load<u8>(slot, RQ_NR_SEGMENTS);
    const n = <u32>load<u16>(slot, RQ_HANDLE);
    const handle = <u64>load<u16>(p, RQ_INDIRECT_HANDLE);
    head |= (handle << (R_HANDLE << 3)) | (<u64>n << (R_NR_SEGMENTS << 3)) | (<u64>indirectOp << (R_INDIRECT_OP << 3));
    const pages = min((n + (1 << SEGMENTS_PER_INDIRECT_PAGE_SHIFT) - 1) >>> SEGMENTS_PER_INDIRECT_PAGE_SHIFT, MAX_INDIRECT_PAGES);
    clearSegmentArea(rec);
    for (let g: u32 = 0; g < pages; g++) {
      store<u32>(rec + R_SEG + (<usize>g << 2), load<u32>(p + RQ_INDIRECT_GREFS + (<usize>g << 2)));
    }
    if (indirectOp != OP_READ && indirectOp != OP_WRITE) status = REQ_BAD_INDIRECT_OP;
    else if (readOnly && indirectOp != OP_READ) status = REQ_READ_ONLY;
    else if (n == 0 || n > maxIndirect) status = REQ_BAD_SEGMENT_COUNT;
  } else {
    const n = <u32>load<u8>(slot, RQ_NR_SEGMENTS);
    const handle = <u64>load<u16>(slot, RQ_HANDLE);
    head |= (handle << (R_HANDLE << 3)) | (<u64>n << (R_NR_SEGMENTS << 3));
    // The segments: all 11 places of the record written, and the loaded values summarised as
    // bits 0..7 the total sectors, SUMMARY_BAD, SUMMARY_MISALIGNED.
    const summary = copySegments(p + RQ_SEG, rec + R_SEG, min(n, MAX_SEGMENTS), alignMask);
    if (readOnly && op != OP_READ) status = REQ_READ_ONLY;
    else if (n > MAX_SEGMENTS || (n == 0 && (op == OP_READ || op == OP_WRITE))) status = REQ_BAD_SEGMENT_COUNT;
    else if (n != 0) {
      const total = <u64>(summary & 0xff);
      const end = sector + total;
      if ((summary & SUMMARY_BAD) != 0) status = REQ_BAD_SEGMENT;
      else if ((summary & SUMMARY_MISALIGNED) != 0 || (sector & <u64>alignMask) != 0) status = REQ_MISALIGNED;
      else if (end < sector || end > disk) status = REQ_OUT_OF_RANGE;
      else nrSectors = total;
    }
  }
  store<u64>(rec, nrSectors, R_NR_SECTORS);
  store<u64>(rec, head | status, R_STATUS);
}

/** Zeroes the record's segment area. */
// @ts-ignore: decorator
@inline function clearSegmentArea(rec: usize): void {
  for (let o: usize = 0; o < SEGMENT_AREA; o += 8) store<u64>(rec + R_SEG + o, 0);
}

// @ts-ignore: decorator
@inline const SUMMARY_BAD: u32 = 0x100;
// @ts-ignore: decorator
@inline const SUMMARY_MISALIGNED: u32 = 0x200;
// A segment with its two pad bytes cleared.
// @ts-ignore: decorator
@inline const SEGMENT_MASK: u64 = 0x0000_ffff_ffff_ffff;

/**
 * Copies `n` (0..11) segments from `src` (the ring) to `dst` (the record), each loaded once,
 * zeroing the record's places for the other 11 - n, and checks the loaded values: returns their total sectors (bits 0..7, at most 88) with
 * SUMMARY_BAD if a segment has first > last or last > 7, SUMMARY_MISALIGNED if a first_sect or
 * a length has bits of `alignMask`.
 */
// @ts-ignore: decorator
@inline function copySegments(src: usize, dst: usize, n: u32, alignMask: u32): u32 {
  if (ASC_FEATURE_SIMD) {
    // Segments 0..9 as five pairs, segment 10 alone: exactly the 88 bytes, no over-read.
    const c0 = v128.and(v128.load(src), keepMask(n, 0));
    const c1 = v128.and(v128.load(src, 16), keepMask(n, 2));
    const c2 = v128.and(v128.load(src, 32), keepMask(n, 4));
    const c3 = v128.and(v128.load(src, 48), keepMask(n, 6));
    const c4 = v128.and(v128.load(src, 64), keepMask(n, 8));
    const c5 = n > 10 ? v128.and(v128.load64_zero(src, 80), keepMask(n, 10)) : i64x2.splat(0);
    v128.store(dst, c0);
    v128.store(dst, c1, 16);
    v128.store(dst, c2, 32);
    v128.store(dst, c3, 48);
    v128.store(dst, c4, 64);
    store<u64>(dst, i64x2.extract_lane(c5, 0), 80);
    // Gather first_sect (byte 4 of a segment) and last_sect (byte 5) of all 11 into two vectors.
    const t01 = i8x16.shuffle(c0, c1, 4, 12, 20, 28, 5, 13, 21, 29, 24, 24, 24, 24, 24, 24, 24, 24);
    const t23 = i8x16.shuffle(c2, c3, 4, 12, 20, 28, 5, 13, 21, 29, 24, 24, 24, 24, 24, 24, 24, 24);
    const t45 = i8x16.shuffle(c4, c5, 4, 12, 20, 28, 5, 13, 21, 29, 24, 24, 24, 24, 24, 24, 24, 24);
    const u = i8x16.shuffle(t01, t23, 0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const first = i8x16.shuffle(u, t45, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 24, 24, 24, 24);
    const last = i8x16.shuffle(u, t45, 8, 9, 10, 11, 12, 13, 14, 15, 20, 21, 22, 23, 24, 24, 24, 24);
    const active = i8x16.gt_u(i8x16.splat(<i8>n), v128(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    const bad = v128.or(i8x16.gt_u(first, last), i8x16.gt_u(last, i8x16.splat(<i8>(SECTORS_PER_PAGE - 1))));
    const length = v128.and(i8x16.add(i8x16.sub(last, first), i8x16.splat(1)), active);
    const misaligned = v128.and(v128.or(first, length), i8x16.splat(<i8>alignMask));
    const sums = i32x4.extadd_pairwise_i16x8_u(i16x8.extadd_pairwise_i8x16_u(length));
    const total = <u32>(i32x4.extract_lane(sums, 0) + i32x4.extract_lane(sums, 1) +
      i32x4.extract_lane(sums, 2) + i32x4.extract_lane(sums, 3));
    return (total & 0xff) | (v128.any_true(bad) ? SUMMARY_BAD : 0) | (v128.any_true(misaligned) ? SUMMARY_MISALIGNED : 0);
  } else {
    let total: u32 = 0;
    let flags: u32 = 0;
    for (let s: u32 = 0; s < n; s++) {
      const seg = load<u64>(src + (<usize>s << 3)) & SEGMENT_MASK;
      store<u64>(dst + (<usize>s << 3), seg);
      const first = <u32>(seg >>> 32) & 0xff;
      const last = <u32>(seg >>> 40) & 0xff;
      if (first > last || last >= SECTORS_PER_PAGE) flags |= SUMMARY_BAD;
      const length = (last - first + 1) & 0xff;
      if (((first | length) & alignMask) != 0) flags |= SUMMARY_MISALIGNED;
      total += length;
    }
    for (let s: u32 = n; s < MAX_SEGMENTS; s++) store<u64>(dst + (<usize>s << 3), 0);
    return (total & 0xff) | flags;
  }
}

/** For the pair of segments from `firstSegment`: the bytes to keep (not padding, segment below n). */
// @ts-ignore: decorator
@inline function keepMask(n: u32, firstSegment: u32): v128 {
  const segmentOfLane = i8x16.add(v128(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1), i8x16.splat(<i8>firstSegment));
  const notPadding = v128(-1, -1, -1, -1, -1, -1, 0, 0, -1, -1, -1, -1, -1, -1, 0, 0);
  return v128.and(i8x16.gt_u(i8x16.splat(<i8>n), segmentOfLane), notPadding);
}
