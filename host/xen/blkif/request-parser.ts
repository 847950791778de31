/**
 * The backend's request parser over one blkif shared ring: reads the frontend's req_prod once,
 * has the blkif_parse kernel (assembly/blkif.ts) copy each new request once out of shared memory
 * into a private 128-byte record and check it there, and hands out the records.
 *
 * The ring is 1 to 16 pages, contiguous in the heap (the pages of ring-ref0..N-1 in order).
 * Indices are free-running u32. One parse takes at most what one ring can hold; a req_prod that
 * claims more (ring.h RING_REQUEST_PROD_OVERFLOW, which Linux blkback answers by halting the
 * ring) or that went behind req_cons is reported as `overflow` and nothing is consumed.
 */

import { ErrorCode, TandemError } from "../../errors.ts";
import type { Heap } from "../../wasm/heap.ts";
import { RING_OVERFLOW, kernelsFor, type KernelFlavor, type Kernels } from "../../wasm/kernels.ts";
import { FLAG_READ_ONLY, LIMITS_SIZE, L_FLAGS, L_MAX_INDIRECT, L_OPERATIONS, L_SECTORS, L_SECTOR_SIZE } from "../../wasm/twin/blkif.ts";
import {
  BlkifOp, BlkifStatus, MAX_INDIRECT_PAGES_PER_REQUEST, MAX_RING_PAGES, MAX_SEGMENTS_PER_REQUEST, RING_PAGE_SIZE,
  SEGMENTS_PER_INDIRECT_PAGE, SRING_REQ_PROD, ringEntries, type BlkifAbi,
} from "./ring-layout.ts";

// The record the kernel writes per request (assembly/blkif.ts has the full table).
/** Bytes of one record. */
export const RECORD_SIZE = 128;
/** Offset of the status (u8, a {@link RequestStatus}). */
export const RECORD_STATUS = 0;
/** Offset of the operation (u8, as sent). */
export const RECORD_OPERATION = 1;
/** Offset of the handle (u16). */
export const RECORD_HANDLE = 2;
/** Offset of nr_segments (u16). */
export const RECORD_NR_SEGMENTS = 4;
/** Offset of indirect_op (u8). */
export const RECORD_INDIRECT_OP = 6;
/** Offset of the discard flag (u8). */
export const RECORD_FLAG = 7;
/** Offset of id (u64). */
export const RECORD_ID = 8;
/** Offset of sector_number (u64). */
export const RECORD_SECTOR = 16;
/** Offset of nr_sectors (u64). */
export const RECORD_NR_SECTORS = 24;
/** Offset of the segments (8 bytes each) or the indirect grefs (u32 each). */
export const RECORD_SEGMENTS = 32;


/** What the parser found wrong with a request, in the order it checks; 0 is fine. */
export const RequestStatus = {
  Ok: 0,
  /** Unknown or reserved operation, or one the backend does not advertise. */
  UnsupportedOp: 1,
  /** An indirect request whose indirect_op is neither read nor write. */
  BadIndirectOp: 2,
  /** Anything but a read on a read-only disk (flush included, as Linux and QEMU refuse it). */
  ReadOnly: 3,
  /** nr_segments 0 on a read or write, above 11, or an indirect count of 0 or above the maximum. */
  BadSegmentCount: 4,
  /** first_sect > last_sect, or last_sect > 7. */
  BadSegment: 5,
  /** sector_number, first_sect or a segment length not a multiple of the logical sector size. */
  Misaligned: 6,
  /** The sectors wrap around 2^64 or pass the end of the disk. */
  OutOfRange: 7,
} as const;

/** One of the values of {@link RequestStatus}. */
export type RequestStatus = (typeof RequestStatus)[keyof typeof RequestStatus];

/**
 * The response status for a request the parser refused: EOPNOTSUPP for an operation the backend
 * does not offer (as Linux blkback answers), ERROR for the rest, OKAY for none.
 */
export function responseStatusFor(status: RequestStatus): number {
  if (status === RequestStatus.Ok) return BlkifStatus.Okay;
  return status === RequestStatus.UnsupportedOp ? BlkifStatus.EOpNotSupp : BlkifStatus.Error;
}

/** The disk behind the ring and the features the backend advertised. */
export interface BlkifDiskLimits {
  /** Size in 512-byte sectors (xenstore `sectors`), below 2^53. */
  sectors: number;
  /** Refuse everything but reads. */
  readOnly: boolean;
  /** xenstore `sector-size`: 512 (default), 1024, 2048 or 4096; requests must align to it. */
  logicalSectorSize?: number;
  /** feature-flush-cache. Default true. */
  flush?: boolean;
  /** feature-barrier. Default false (QEMU does not offer it). */
  barrier?: boolean;
  /** feature-discard. Default true. */
  discard?: boolean;
  /** feature-max-indirect-segments; 0 means indirect requests are not offered. Default 256 (Linux). */
  maxIndirectSegments?: number;
}

/** Where the ring is and how to read it. */
export interface BlkifRingOptions {
  /** Heap offset of the shared ring's first page. */
  ring: number;
  /** Pages of the ring, 1..16 (2^ring-page-order). */
  pages: number;
  /** The request layout (from the frontend's `protocol`, see abiForProtocol). */
  abi: BlkifAbi;
  /** Which kernels to run; default the fastest available. */
  kernels?: KernelFlavor | Kernels;
}

/** The outcome of one {@link BlkifRequestParser.parse}. */
export interface ParseResult {
  /** Records written (requests consumed). */
  count: number;
  /** The backend's req_cons after this parse. */
  reqCons: number;
  /** The req_prod read from the ring. */
  reqProd: number;
  /** The frontend's req_prod is impossible; nothing was consumed (Linux halts the ring). */
  overflow: boolean;
}

/** A segment of a read or write: an inclusive range of 512-byte sectors in one granted page. */
export interface BlkifSegment {
  gref: number;
  firstSect: number;
  lastSect: number;
}

/** A request as the parser copied it, decoded for callers that want objects. */
export interface BlkifRequest {
  status: RequestStatus;
  operation: number;
  handle: number;
  /** nr_segments as sent (rw: 0..255, indirect: 0..65535); 0 for discard and unknown ops. */
  nrSegments: number;
  /** The operation inside an indirect request. */
  indirectOp: number;
  /** A discard's flag (BLKIF_DISCARD_SECURE). */
  discardFlag: number;
  id: bigint;
  sectorNumber: bigint;
  /** Discard: as sent; rw ops that passed: the segments' total; otherwise 0. */
  nrSectors: bigint;
  /** The first min(nrSegments, 11) segments of a rw op. */
  segments: BlkifSegment[];
  /** An indirect request's page grants: ceil(nrSegments / 512), at most 8. */
  indirectGrefs: number[];
}

/** Parses requests from one shared ring into private records. */
export class BlkifRequestParser {
  /** Slots in the ring (a power of two: 32 per page). */
  readonly entries: number;
  /** Heap offset of the records of the last parse, {@link RECORD_SIZE} bytes each. */
  readonly records: number;
  readonly #heap: Heap;
  readonly #kernels: Kernels;
  readonly #ring: number;
  readonly #abi: BlkifAbi;
  readonly #limits: number;

  constructor(heap: Heap, options: BlkifRingOptions, disk: BlkifDiskLimits) {
    const { ring, pages, abi } = options;
    if (!Number.isInteger(pages) || pages < 1 || pages > MAX_RING_PAGES) {
      throw new TandemError(ErrorCode.BadArgument, `a blkif ring has 1 to ${MAX_RING_PAGES} pages, not ${pages}`);
    }
    if (!Number.isInteger(ring) || ring < 0 || ring + pages * RING_PAGE_SIZE > heap.memory.buffer.byteLength) {
      throw new TandemError(ErrorCode.OutOfRange, `the ring at ${ring} (${pages} pages) is not inside the heap's memory`);
    }
    this.#heap = heap;
    this.#ring = ring;
    this.#abi = abi;
    this.#kernels = typeof options.kernels === "object" ? options.kernels : kernelsFor(heap, options.kernels);
    this.entries = ringEntries(pages, abi);
    this.#limits = heap.alloc(LIMITS_SIZE);
    this.records = heap.alloc(this.entries * RECORD_SIZE);
    this.setLimits(disk);
  }

  /** Changes the disk limits (a resize, a switch to read-only) for later parses. */
  setLimits(disk: BlkifDiskLimits): void {
    const sectorSize = disk.logicalSectorSize ?? 512;
    const maxIndirect = disk.maxIndirectSegments ?? 256;
    if (!Number.isSafeInteger(disk.sectors) || disk.sectors < 0) {
      throw new TandemError(ErrorCode.BadArgument, `disk sectors must be an integer from 0 to 2^53-1, not ${disk.sectors}`);
    }
    if (![512, 1024, 2048, 4096].includes(sectorSize)) {
      throw new TandemError(ErrorCode.BadArgument, `logical sector size must be 512, 1024, 2048 or 4096, not ${sectorSize}`);
    }
    const indirectLimit = MAX_INDIRECT_PAGES_PER_REQUEST * SEGMENTS_PER_INDIRECT_PAGE;
    if (!Number.isInteger(maxIndirect) || maxIndirect < 0 || maxIndirect > indirectLimit) {
      throw new TandemError(ErrorCode.BadArgument, `max indirect segments must be 0 to ${indirectLimit}, not ${maxIndirect}`);
    }
    let operations = (1 << BlkifOp.Read) | (1 << BlkifOp.Write);
    if (disk.flush ?? true) operations |= 1 << BlkifOp.FlushDiskcache;
    if (disk.barrier ?? false) operations |= 1 << BlkifOp.WriteBarrier;
    if (disk.discard ?? true) operations |= 1 << BlkifOp.Discard;
    if (maxIndirect > 0) operations |= 1 << BlkifOp.Indirect;
    const view = new DataView(this.#heap.memory.buffer);
    view.setUint32(this.#limits + L_SECTORS, disk.sectors % 2 ** 32, true);
    view.setUint32(this.#limits + L_SECTORS + 4, Math.floor(disk.sectors / 2 ** 32), true);
    view.setUint32(this.#limits + L_FLAGS, disk.readOnly ? FLAG_READ_ONLY : 0, true);
    view.setUint32(this.#limits + L_OPERATIONS, operations, true);
    view.setUint32(this.#limits + L_SECTOR_SIZE, sectorSize, true);
    view.setUint32(this.#limits + L_MAX_INDIRECT, maxIndirect, true);
  }

  /**
   * Reads req_prod once from the ring, then copies and checks the requests from `reqCons` on,
   * at most `maxRequests` (default: a ring's worth), into {@link records}. `rspProdPvt` is the
   * backend's private response producer: the slots from it to `reqCons` are still in flight.
   */
  parse(reqCons: number, rspProdPvt: number, maxRequests: number = this.entries): ParseResult {
    for (const [name, value] of [["reqCons", reqCons], ["rspProdPvt", rspProdPvt]] as const) {
      if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
        throw new TandemError(ErrorCode.BadArgument, `${name} must be a u32 ring index, not ${value}`);
      }
    }
    if (((reqCons - rspProdPvt) >>> 0) > this.entries) {
      throw new TandemError(ErrorCode.BadArgument, `req_cons ${reqCons} is more than a ring (${this.entries}) past rsp_prod_pvt ${rspProdPvt}`);
    }
    if (!Number.isInteger(maxRequests) || maxRequests < 0 || maxRequests > this.entries) {
      throw new TandemError(ErrorCode.BadArgument, `maxRequests must be 0 to ${this.entries}, not ${maxRequests}`);
    }
    // The one read of the frontend's index; a seq-cst load also orders the slot reads after it.
    const reqProd = Atomics.load(this.#heap.u32, (this.#ring + SRING_REQ_PROD) >>> 2);
    const n = this.#kernels.blkifParse(this.#ring, this.#abi, this.entries, reqCons, reqProd, rspProdPvt, maxRequests, this.#limits, this.records);
    if (n === RING_OVERFLOW) return { count: 0, reqCons, reqProd, overflow: true };
    return { count: n, reqCons: (reqCons + n) >>> 0, reqProd, overflow: false };
  }

  /** Record `index` of the last parse, decoded. */
  request(index: number): BlkifRequest {
    if (!Number.isInteger(index) || index < 0 || index >= this.entries) {
      throw new TandemError(ErrorCode.OutOfRange, `record ${index} is not one of the ${this.entries} record slots`);
    }
    const at = this.records + index * RECORD_SIZE;
    const view = new DataView(this.#heap.memory.buffer);
    const operation = view.getUint8(at + RECORD_OPERATION);
    const nrSegments = view.getUint16(at + RECORD_NR_SEGMENTS, true);
    const segments: BlkifSegment[] = [];
    const indirectGrefs: number[] = [];
    if (operation === BlkifOp.Indirect) {
      const pages = Math.min(Math.ceil(nrSegments / SEGMENTS_PER_INDIRECT_PAGE), MAX_INDIRECT_PAGES_PER_REQUEST);
      for (let g = 0; g < pages; g++) indirectGrefs.push(view.getUint32(at + RECORD_SEGMENTS + 4 * g, true));
    } else if (operation <= BlkifOp.FlushDiskcache) {
      for (let s = 0; s < Math.min(nrSegments, MAX_SEGMENTS_PER_REQUEST); s++) {
        const seg = at + RECORD_SEGMENTS + 8 * s;
        segments.push({ gref: view.getUint32(seg, true), firstSect: view.getUint8(seg + 4), lastSect: view.getUint8(seg + 5) });
      }
    }
    return {
      status: view.getUint8(at + RECORD_STATUS) as RequestStatus,
      operation,
      handle: view.getUint16(at + RECORD_HANDLE, true),
      nrSegments,
      indirectOp: view.getUint8(at + RECORD_INDIRECT_OP),
      discardFlag: view.getUint8(at + RECORD_FLAG),
      id: view.getBigUint64(at + RECORD_ID, true),
      sectorNumber: view.getBigUint64(at + RECORD_SECTOR, true),
      nrSectors: view.getBigUint64(at + RECORD_NR_SECTORS, true),
      segments,
      indirectGrefs,
    };
  }
}
