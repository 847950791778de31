/**
 * Serves one request the parser copied and checked: moves its data through the grant table
 * (GNTTABOP_copy semantics, one batch per request, as QEMU's xen-block does: reference section 4)
 * and does the Disk operation. Returns the response status; never throws for anything a frontend
 * or the disk can cause.
 *
 * Indirect requests: the segments live in the frontend's indirect pages, shared memory too, so
 * they are copied once into a private buffer and checked there (first_sect <= last_sect <= 7,
 * alignment to the logical sector size, the range against the disk) before any is used, as Linux
 * blkback's "read from indirect descriptors only once" fix requires (reference section 8).
 */

import { TandemError } from "../../errors.ts";
import type { Disk } from "../../disk/disk.ts";
import type { GrantCopySegment, GrantTable } from "../grants/grant-table.ts";
import { GrantStatus } from "../grants/grant-entry.ts";
import {
  BLKIF_SECTOR_SIZE, BlkifOp, BlkifStatus, DISCARD_SECURE, MAX_SEGMENTS_PER_REQUEST, SEGMENT_FIRST_SECT, SEGMENT_GREF,
  SEGMENT_LAST_SECT, SEGMENT_SIZE, SEGMENTS_PER_INDIRECT_PAGE,
} from "../blkif/ring-layout.ts";
import { RequestStatus, responseStatusFor, type BlkifRequest, type BlkifSegment } from "../blkif/request-parser.ts";

/** Sectors of 512 bytes in one 4096-byte page: last_sect is at most this minus one. */
const SECTORS_PER_PAGE = 8;

/** What the executor serves requests with. */
export interface RequestExecutorOptions {
  /** The frontend's grant table. */
  grants: GrantTable;
  /** The backend's domain: the one the grants must be for. */
  backendDomid: number;
  disk: Disk;
  /** Disk size in 512-byte sectors, as advertised. */
  sectors: number;
  readOnly: boolean;
  /** The advertised logical sector size (512..4096). */
  logicalSectorSize: number;
  /** The advertised feature-max-indirect-segments (0: none). */
  maxIndirectSegments: number;
  /** Where disk failures that are not TandemErrors go (bugs, not guest input). */
  onError: (error: unknown) => void;
}

/** The status of a request, and the operation its response names. */
export interface ExecutionResult {
  status: number;
  /** The operation as sent; an indirect request answers with its inner operation, as Linux blkback does. */
  operation: number;
}

/** Serves requests of one connected ring. */
export class RequestExecutor {
  readonly #options: RequestExecutorOptions;
  /** The data of the largest request, reused (a request is served to completion before the next). */
  readonly #buffer: Uint8Array;
  /** The private copy of an indirect request's segment pages. */
  readonly #indirect: Uint8Array;

  constructor(options: RequestExecutorOptions) {
    this.#options = options;
    const maxSegments = Math.max(MAX_SEGMENTS_PER_REQUEST, options.maxIndirectSegments);
    this.#buffer = new Uint8Array(maxSegments * SECTORS_PER_PAGE * BLKIF_SECTOR_SIZE);
    this.#indirect = new Uint8Array(options.maxIndirectSegments * SEGMENT_SIZE);
  }

  /** Serves `request` (a parser record) and says how to answer it. */
  execute(request: BlkifRequest): ExecutionResult {
    const operation = request.operation === BlkifOp.Indirect && request.status === RequestStatus.Ok ? request.indirectOp : request.operation;
    if (request.status !== RequestStatus.Ok) return { status: responseStatusFor(request.status), operation };
    try {
      return { status: this.#serve(request), operation };
    } catch (error) {
      // A disk's own refusals (I/O error, read-only, range) answer ERROR; anything else is also a bug to report.
      if (!(error instanceof TandemError)) this.#options.onError(error);
      return { status: BlkifStatus.Error, operation };
    }
  }

  #serve(request: BlkifRequest): number {
    const { disk } = this.#options;
    switch (request.operation) {
      case BlkifOp.Read:
      case BlkifOp.Write:
        return this.#transfer(request.operation === BlkifOp.Write, request.sectorNumber, request.segments);
      case BlkifOp.WriteBarrier:
      case BlkifOp.FlushDiskcache: {
        // Data carried by a flush or barrier is written, then everything is made durable: with
        // synchronous disks every earlier request has completed, which is all a barrier asks.
        if (request.segments.length > 0) {
          const status = this.#transfer(true, request.sectorNumber, request.segments);
          if (status !== BlkifStatus.Okay) return status;
        }
        disk.flush();
        return BlkifStatus.Okay;
      }
      case BlkifOp.Discard:
        // No discard-secure is advertised: a secure erase cannot be promised (Linux answers so too).
        if ((request.discardFlag & DISCARD_SECURE) !== 0) return BlkifStatus.EOpNotSupp;
        disk.discard(Number(request.sectorNumber) * BLKIF_SECTOR_SIZE, Number(request.nrSectors) * BLKIF_SECTOR_SIZE);
        return BlkifStatus.Okay;
      case BlkifOp.Indirect:
        return this.#indirectTransfer(request);
      default:
        return BlkifStatus.EOpNotSupp;
    }
  }

  /** Copies the indirect pages once, checks the copy, then transfers. */
  #indirectTransfer(request: BlkifRequest): number {
    const { grants, backendDomid, readOnly } = this.#options;
    const write = request.indirectOp === BlkifOp.Write;
    if (write && readOnly) return BlkifStatus.Error;
    const count = request.nrSegments;
    const copies: GrantCopySegment[] = request.indirectGrefs.map((ref, page) => ({
      direction: "from-grant",
      ref,
      offset: 0,
      length: Math.min(SEGMENTS_PER_INDIRECT_PAGE, count - page * SEGMENTS_PER_INDIRECT_PAGE) * SEGMENT_SIZE,
      buffer: this.#indirect,
      bufferOffset: page * SEGMENTS_PER_INDIRECT_PAGE * SEGMENT_SIZE,
    }));
    if (grants.copy(backendDomid, copies).some((status) => status !== GrantStatus.Okay)) return BlkifStatus.Error;
    const view = new DataView(this.#indirect.buffer, this.#indirect.byteOffset, count * SEGMENT_SIZE);
    const segments: BlkifSegment[] = [];
    for (let i = 0; i < count; i++) {
      const at = i * SEGMENT_SIZE;
      segments.push({ gref: view.getUint32(at + SEGMENT_GREF, true), firstSect: view.getUint8(at + SEGMENT_FIRST_SECT), lastSect: view.getUint8(at + SEGMENT_LAST_SECT) });
    }
    return this.#transfer(write, request.sectorNumber, segments, true);
  }

  /**
   * Moves the segments' data between the disk and the granted pages. `check` validates the
   * segments first (the parser has checked those of a direct request already).
   */
  #transfer(write: boolean, sectorNumber: bigint, segments: readonly BlkifSegment[], check = false): number {
    const { grants, backendDomid, disk } = this.#options;
    let sectors = 0;
    for (const { firstSect, lastSect } of segments) sectors += lastSect - firstSect + 1;
    if (check && !this.#valid(sectorNumber, segments, sectors)) return BlkifStatus.Error;
    const data = this.#buffer.subarray(0, sectors * BLKIF_SECTOR_SIZE);
    const offset = Number(sectorNumber) * BLKIF_SECTOR_SIZE;
    const copies: GrantCopySegment[] = [];
    let at = 0;
    for (const { gref, firstSect, lastSect } of segments) {
      const length = (lastSect - firstSect + 1) * BLKIF_SECTOR_SIZE;
      copies.push({ direction: write ? "from-grant" : "to-grant", ref: gref, offset: firstSect * BLKIF_SECTOR_SIZE, length, buffer: data, bufferOffset: at });
      at += length;
    }
    if (write) {
      if (grants.copy(backendDomid, copies).some((status) => status !== GrantStatus.Okay)) return BlkifStatus.Error;
      disk.write(offset, data);
      return BlkifStatus.Okay;
    }
    disk.readInto(offset, data);
    return grants.copy(backendDomid, copies).every((status) => status === GrantStatus.Okay) ? BlkifStatus.Okay : BlkifStatus.Error;
  }

  /** The checks the parser makes of direct segments (reference section 8), on the private copy of indirect ones. */
  #valid(sectorNumber: bigint, segments: readonly BlkifSegment[], sectors: number): boolean {
    const align = this.#options.logicalSectorSize / BLKIF_SECTOR_SIZE;
    for (const { firstSect, lastSect } of segments) {
      if (firstSect > lastSect || lastSect >= SECTORS_PER_PAGE) return false;
      if (firstSect % align !== 0 || (lastSect - firstSect + 1) % align !== 0) return false;
    }
    if (sectorNumber % BigInt(align) !== 0n) return false;
    return sectorNumber + BigInt(sectors) <= BigInt(this.#options.sectors);
  }
}
