/**
 * Plain-TypeScript twin of assembly/blkif.ts: the same ring walk, the same 128-byte records and
 * statuses, byte for byte (see that file for the layouts and the single-copy rule, which this
 * twin keeps too: each request byte is read from the ring once, into a local).
 */

import type { Heap } from "../heap.ts";

const HEADER_SIZE = 64;
const ABI_X86_64 = 2;
const OP_READ = 0;
const OP_WRITE = 1;
const OP_DISCARD = 5;
const OP_INDIRECT = 6;
const MAX_SEGMENTS = 11;
const MAX_INDIRECT_PAGES = 8;
const SEGMENTS_PER_INDIRECT_PAGE = 512;
const SECTORS_PER_PAGE = 8;

const RQ_OPERATION = 0;
const RQ_NR_SEGMENTS = 1;
const RQ_HANDLE = 2;
const RQ_ID = 4;
const RQ_SECTOR = 12;
const RQ_SEG = 20;
const RQ_DISCARD_NR_SECTORS = 20;
const RQ_INDIRECT_HANDLE = 20;
const RQ_INDIRECT_GREFS = 24;

const RECORD_SIZE = 128;
const R_STATUS = 0;
const R_OPERATION = 1;
const R_HANDLE = 2;
const R_NR_SEGMENTS = 4;
const R_INDIRECT_OP = 6;
const R_FLAG = 7;
const R_ID = 8;
const R_SECTOR = 16;
const R_NR_SECTORS = 24;
const R_SEG = 32;

// The limits block (assembly/blkif.ts), also written by host/xen/blkif/request-parser.ts.
/** Bytes of the limits block. */
export const LIMITS_SIZE = 32;
/** u64: the disk's size in 512-byte sectors. */
export const L_SECTORS = 0;
/** u32: FLAG_READ_ONLY. */
export const L_FLAGS = 8;
/** u32: a bit per operation the backend advertises (1 << BLKIF_OP_*). */
export const L_OPERATIONS = 12;
/** u32: the logical sector size in bytes. */
export const L_SECTOR_SIZE = 16;
/** u32: feature-max-indirect-segments (0: no indirect requests). */
export const L_MAX_INDIRECT = 20;
/** The disk refuses everything but reads. */
export const FLAG_READ_ONLY = 1;

const REQ_OK = 0;
const REQ_UNSUPPORTED_OP = 1;
const REQ_BAD_INDIRECT_OP = 2;
const REQ_READ_ONLY = 3;
const REQ_BAD_SEGMENT_COUNT = 4;
const REQ_BAD_SEGMENT = 5;
const REQ_MISALIGNED = 6;
const REQ_OUT_OF_RANGE = 7;

/** Returned when the frontend's req_prod is impossible (see assembly/blkif.ts). */
export const RING_OVERFLOW = 0xffffffff;

/** 2^32, to join u64 halves. */
const HI = 4294967296;

/** See assembly/blkif.ts blkif_parse for the contract. */
export function blkifParse(
  heap: Heap, ring: number, abi: number, entries: number, reqCons: number, reqProd: number, rspProdPvt: number,
  maxRequests: number, limits: number, out: number,
): number {
  const claimed = (reqProd - rspProdPvt) >>> 0;
  const available = (reqProd - reqCons) >>> 0;
  if (claimed > entries || available > claimed) return RING_OVERFLOW;
  const count = Math.min(available, maxRequests >>> 0);
  const view = new DataView(heap.memory.buffer);
  const u8 = heap.u8;
  const entrySize = abi === ABI_X86_64 ? 112 : 108;
  const shift = abi === ABI_X86_64 ? 4 : 0;
  const mask = entries - 1;
  const disk = readU64(view, limits + L_SECTORS);
  const readOnly = (view.getUint32(limits + L_FLAGS, true) & FLAG_READ_ONLY) !== 0;
  const operations = view.getUint32(limits + L_OPERATIONS, true);
  const alignMask = (view.getUint32(limits + L_SECTOR_SIZE, true) >>> 9) - 1;
  const maxIndirect = view.getUint32(limits + L_MAX_INDIRECT, true);
  for (let i = 0; i < count; i++) {
    const slot = ring + HEADER_SIZE + (((reqCons + i) & mask) >>> 0) * entrySize;
    const p = slot + shift;
    const rec = out + i * RECORD_SIZE;
    u8.fill(0, rec, rec + RECORD_SIZE);
    const op = u8[slot + RQ_OPERATION];
    u8[rec + R_OPERATION] = op;
    const idLo = view.getUint32(p + RQ_ID, true);
    const idHi = view.getUint32(p + RQ_ID + 4, true);
    view.setUint32(rec + R_ID, idLo, true);
    view.setUint32(rec + R_ID + 4, idHi, true);
    if (op > 31 || ((operations >>> op) & 1) === 0) {
      u8[rec + R_STATUS] = REQ_UNSUPPORTED_OP;
      continue;
    }
    const sectorLo = view.getUint32(p + RQ_SECTOR, true);
    const sectorHi = view.getUint32(p + RQ_SECTOR + 4, true);
    view.setUint32(rec + R_SECTOR, sectorLo, true);
    view.setUint32(rec + R_SECTOR + 4, sectorHi, true);
    let status = REQ_OK;
    if (op === OP_DISCARD) {
      u8[rec + R_FLAG] = u8[slot + RQ_NR_SEGMENTS];
      view.setUint16(rec + R_HANDLE, view.getUint16(slot + RQ_HANDLE, true), true);
      const countLo = view.getUint32(p + RQ_DISCARD_NR_SECTORS, true);
      const countHi = view.getUint32(p + RQ_DISCARD_NR_SECTORS + 4, true);
      view.setUint32(rec + R_NR_SECTORS, countLo, true);
      view.setUint32(rec + R_NR_SECTORS + 4, countHi, true);
      if (readOnly) status = REQ_READ_ONLY;
      else if (!rangeInside(sectorHi, sectorLo, countHi, countLo, disk)) status = REQ_OUT_OF_RANGE;
    } else if (op === OP_INDIRECT) {
      const indirectOp = u8[slot + RQ_NR_SEGMENTS];
      const n = view.getUint16(slot + RQ_HANDLE, true);
      u8[rec + R_INDIRECT_OP] = indirectOp;
      view.setUint16(rec + R_NR_SEGMENTS, n, true);
      view.setUint16(rec + R_HANDLE, view.getUint16(p + RQ_INDIRECT_HANDLE, true), true);
      const pages = Math.min(Math.ceil(n / SEGMENTS_PER_INDIRECT_PAGE), MAX_INDIRECT_PAGES);
      for (let g = 0; g < pages; g++) {
        view.setUint32(rec + R_SEG + g * 4, view.getUint32(p + RQ_INDIRECT_GREFS + g * 4, true), true);
      }
      if (indirectOp !== OP_READ && indirectOp !== OP_WRITE) status = REQ_BAD_INDIRECT_OP;
      else if (readOnly && indirectOp !== OP_READ) status = REQ_READ_ONLY;
      else if (n === 0 || n > maxIndirect) status = REQ_BAD_SEGMENT_COUNT;
    } else {
      const n = u8[slot + RQ_NR_SEGMENTS];
      view.setUint16(rec + R_NR_SEGMENTS, n, true);
      view.setUint16(rec + R_HANDLE, view.getUint16(slot + RQ_HANDLE, true), true);
      let total = 0;
      let bad = false;
      let misaligned = false;
      const copied = Math.min(n, MAX_SEGMENTS);
      for (let s = 0; s < copied; s++) {
        const from = p + RQ_SEG + s * 8;
        const to = rec + R_SEG + s * 8;
        const gref = view.getUint32(from, true);
        const first = u8[from + 4];
        const last = u8[from + 5];
        view.setUint32(to, gref, true);
        u8[to + 4] = first;
        u8[to + 5] = last;
        if (first > last || last >= SECTORS_PER_PAGE) bad = true;
        const length = (last - first + 1) & 0xff;
        if (((first | length) & alignMask) !== 0) misaligned = true;
        total += length;
      }
      if (readOnly && op !== OP_READ) status = REQ_READ_ONLY;
      else if (n > MAX_SEGMENTS || (n === 0 && (op === OP_READ || op === OP_WRITE))) status = REQ_BAD_SEGMENT_COUNT;
      else if (n !== 0) {
        if (bad) status = REQ_BAD_SEGMENT;
        else if (misaligned || (sectorLo & alignMask) !== 0) status = REQ_MISALIGNED;
        else if (!rangeInside(sectorHi, sectorLo, 0, total, disk)) status = REQ_OUT_OF_RANGE;
        else view.setUint32(rec + R_NR_SECTORS, total, true);
      }
    }
    u8[rec + R_STATUS] = status;
  }
  return count;
}

/**
 * Whether sectors [start, start + count) lie inside a disk of `disk` sectors, with start and
 * count u64 given as halves. `disk` is below 2^53 (the parser's caller checks), so any half
 * at or above 2^21 means past the end, and below that the sums are exact or, near 2^53, still
 * above `disk`.
 */
function rangeInside(startHi: number, startLo: number, countHi: number, countLo: number, disk: number): boolean {
  if (startHi >= 0x200000 || countHi >= 0x200000) return false;
  return startHi * HI + startLo + countHi * HI + countLo <= disk;
}

function readU64(view: DataView, at: number): number {
  return view.getUint32(at + 4, true) * HI + view.getUint32(at, true);
}
