/**
 * The xen-block dataplane: one connected ring between a frontend and a tandem {@link Disk}
 * (after QEMU's hw/block/dataplane/xen-block.c and Linux blkback; reference section 4).
 *
 * On start it maps the ring pages through the frontend's grant table (writable, ring-ref0..N-1
 * in order), attaches at the ring's rsp_prod and binds the frontend's event channel. On each event it runs passes until the ring
 * is idle: a pass reads req_prod once, copies the new slots once out of the shared pages into a
 * private mirror of the ring in a Wasm heap (at most a batch, and never more than a ring), has
 * the blkif parser check them there, serves each, writes each response in place at rsp_prod_pvt,
 * then publishes them and notifies the frontend only if its rsp_event asks for it
 * (RING_PUSH_RESPONSES_AND_CHECK_NOTIFY, io/ring.h). When no work is left it sets req_event to
 * req_cons + 1 and looks again (RING_FINAL_CHECK_FOR_REQUESTS), so a request published meanwhile
 * is not left behind. A wake serves at most a few rings' worth, then yields to the event loop and
 * continues, so a frontend that keeps the ring full cannot starve everything else.
 *
 * Disks are synchronous, so the batch bound is the bound on requests in flight. A req_prod more
 * than a ring ahead of the responses (RING_REQUEST_PROD_OVERFLOW) halts the ring as Linux blkback
 * does: nothing more is consumed until the frontend reconnects.
 */

import { ErrorCode, TandemError } from "../../errors.ts";
import type { Disk } from "../../disk/disk.ts";
import { Heap } from "../../wasm/heap.ts";
import type { KernelFlavor } from "../../wasm/kernels.ts";
import type { EventChannels } from "../event-channel.ts";
import type { GrantMapping } from "../grants/grant-mapping.ts";
import type { GrantTable } from "../grants/grant-table.ts";
import {
  MAX_RING_PAGES, RESPONSE_ID, RESPONSE_OPERATION, RESPONSE_STATUS, RING_PAGE_SIZE, SRING_HEADER_SIZE, SRING_REQ_EVENT,
  SRING_REQ_PROD, SRING_RSP_EVENT, SRING_RSP_PROD, layoutFor, ringEntries, type BlkifAbi, type RequestLayout,
} from "../blkif/ring-layout.ts";
import { BlkifRequestParser, RECORD_SIZE, type BlkifDiskLimits } from "../blkif/request-parser.ts";
import { RequestExecutor } from "./request-executor.ts";
import { RingPages } from "./ring-pages.ts";

/** Default bound on requests served per pass (QEMU and Linux keep about a ring of 32 in flight). */
export const DEFAULT_MAX_BATCH = 32;
/** Rings' worth of requests one wake serves before yielding to the event loop. */
const RINGS_PER_WAKE = 4;

/**
 * The disk and what the backend advertised about it. Defaults as the parser's, except that
 * barrier is offered unless `barrier: false` (served as a flush) and discard only when writable.
 */
export interface DataplaneDisk extends BlkifDiskLimits {
  disk: Disk;
}

/** How a dataplane is set up. */
export interface DataplaneOptions {
  /** The frontend's grant table. */
  grants: GrantTable;
  channels: EventChannels;
  backendDomid: number;
  frontendDomid: number;
  device: DataplaneDisk;
  /** Requests served per pass, 1 to a ring; default {@link DEFAULT_MAX_BATCH}. */
  maxBatch?: number;
  /** Which parser kernels to run; default the fastest. */
  kernels?: KernelFlavor;
  /** Where a halted ring and unexpected failures are reported; default console.error. */
  onError?: (error: unknown) => void;
}

/** Where the ring is: the grant references and the frontend's port, as read from xenstore. */
export interface DataplaneRing {
  refs: readonly number[];
  port: number;
  abi: BlkifAbi;
}

/** Counters, for tests and benchmarks. */
export interface DataplaneStats {
  requests: number;
  notifications: number;
  passes: number;
}

interface Connection {
  mappings: GrantMapping[];
  ring: RingPages;
  layout: RequestLayout;
  entries: number;
  port: number;
  heap: Heap;
  mirror: number;
  parser: BlkifRequestParser;
  executor: RequestExecutor;
  reqCons: number;
  rspProdPvt: number;
  /** The rsp_prod this side last published (its own copy: the shared one is the frontend's to scribble on). */
  rspProd: number;
}

/** One device's dataplane; connected between {@link start} and {@link stop}. */
export class XenBlockDataplane {
  readonly #options: DataplaneOptions;
  readonly #onError: (error: unknown) => void;
  readonly #stats: DataplaneStats = { requests: 0, notifications: 0, passes: 0 };
  /** A fixed response buffer, zeroed padding included (XSA-216: no stale bytes reach the guest). */
  readonly #response = new Uint8Array(16);
  #connection: Connection | undefined;
  #halted = false;
  #scheduled = false;

  constructor(options: DataplaneOptions) {
    const batch = options.maxBatch ?? DEFAULT_MAX_BATCH;
    if (!Number.isInteger(batch) || batch < 1) throw new TandemError(ErrorCode.BadArgument, `maxBatch ${batch}: expected an integer of at least 1`);
    this.#options = options;
    this.#onError = options.onError ?? ((error) => console.error("xen-block dataplane:", error));
  }

  /** Whether a ring is connected. */
  get connected(): boolean {
    return this.#connection !== undefined;
  }

  /** Whether the frontend's req_prod went impossible and the ring stopped (until the next start). */
  get halted(): boolean {
    return this.#halted;
  }

  /** Requests served, notifications sent and passes run since construction. */
  get stats(): Readonly<DataplaneStats> {
    return { ...this.#stats };
  }

  /**
   * Maps the ring and binds the event channel, then serves any requests already posted. Refusals
   * (a grant that is not there or not for this domain, a port that is not unbound for it) throw
   * and leave nothing mapped or bound.
   */
  start(ring: DataplaneRing): void {
    if (this.#connection !== undefined) throw new TandemError(ErrorCode.InvalidState, "the xen-block dataplane is already started; stop it first");
    const { grants, channels, backendDomid, frontendDomid, device } = this.#options;
    const pages = ring.refs.length;
    if (pages < 1 || pages > MAX_RING_PAGES || (pages & (pages - 1)) !== 0) {
      throw new TandemError(ErrorCode.BadArgument, `a ring has 1, 2, 4, 8 or 16 pages, not ${pages}`);
    }
    const mappings: GrantMapping[] = [];
    let port: number | undefined;
    try {
      for (const ref of ring.refs) mappings.push(grants.map(backendDomid, ref, true));
      port = channels.bindInterdomain(backendDomid, frontendDomid, ring.port);
      const entries = ringEntries(pages, ring.abi);
      const heap = Heap.create(pages * RING_PAGE_SIZE + entries * RECORD_SIZE + 2 * RING_PAGE_SIZE);
      const mirror = heap.alloc(pages * RING_PAGE_SIZE, RING_PAGE_SIZE);
      const readOnly = device.readOnly;
      const maxIndirectSegments = device.maxIndirectSegments ?? 256;
      const logicalSectorSize = device.logicalSectorSize ?? 512;
      const parser = new BlkifRequestParser(heap, { ring: mirror, pages, abi: ring.abi, kernels: this.#options.kernels }, {
        sectors: device.sectors,
        readOnly,
        logicalSectorSize,
        flush: device.flush ?? true,
        barrier: device.barrier ?? true,
        discard: device.discard ?? !readOnly,
        maxIndirectSegments,
      });
      const executor = new RequestExecutor({
        grants, backendDomid, disk: device.disk, sectors: device.sectors, readOnly, logicalSectorSize, maxIndirectSegments, onError: this.#onError,
      });
      const shared = new RingPages(mappings.map((m) => () => m.bytes));
      // BACK_RING_ATTACH at the ring's rsp_prod (as Linux blkback does, so a ring can be taken over
      // where it stands); the frontend initialised the page, the backend never does.
      const start = shared.getU32(SRING_RSP_PROD);
      const posted = (shared.getU32(SRING_REQ_PROD) - start) >>> 0;
      if (posted > entries) {
        throw new TandemError(ErrorCode.OutOfRange, `the ring's req_prod is ${posted} requests past its rsp_prod ${start}, more than its ${entries} slots`);
      }
      this.#connection = {
        mappings, ring: shared, layout: layoutFor(ring.abi), entries, port, heap, mirror, parser, executor,
        reqCons: start, rspProdPvt: start, rspProd: start,
      };
    } catch (error) {
      for (const mapping of mappings) mapping.unmap();
      if (port !== undefined) channels.close(backendDomid, port);
      throw error;
    }
    this.#halted = false;
    channels.onEvent(backendDomid, port, () => this.#wake());
    this.#wake();
  }

  /** Unbinds the event channel and unmaps the ring; calling it again does nothing. */
  stop(): void {
    const connection = this.#connection;
    if (connection === undefined) return;
    this.#connection = undefined;
    const { channels, backendDomid } = this.#options;
    if (channels.state(backendDomid, connection.port) !== "free") channels.close(backendDomid, connection.port);
    for (const mapping of connection.mappings) mapping.unmap();
  }

  /** Serves what is on the ring now (also what an event does). */
  #wake(): void {
    const connection = this.#connection;
    if (connection === undefined || this.#halted) return;
    try {
      this.#serve(connection);
    } catch (error) {
      this.#halted = true;
      this.#onError(error);
    }
  }

  #serve(c: Connection): void {
    let budget = RINGS_PER_WAKE * c.entries;
    for (;;) {
      if (this.#connection !== c) return;
      const served = this.#pass(c);
      if (served < 0) {
        this.#halted = true;
        this.#onError(new TandemError(ErrorCode.OutOfRange, `xen-block: the frontend's req_prod ${c.ring.getU32(SRING_REQ_PROD)} is more than a ring (${c.entries}) past the responses (${c.rspProdPvt}); ring processing halted`));
        return;
      }
      budget -= served;
      if (this.#unconsumed(c)) {
        if (budget > 0) continue;
        this.#continueLater();
        return;
      }
      // RING_FINAL_CHECK_FOR_REQUESTS: ask to be told of the next request, then look once more.
      c.ring.setU32(SRING_REQ_EVENT, (c.reqCons + 1) >>> 0);
      if (!this.#unconsumed(c)) return;
    }
  }

  #continueLater(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    setTimeout(() => {
      this.#scheduled = false;
      this.#wake();
    }, 0);
  }

  /** Whether req_prod has moved past req_cons (an impossible req_prod counts: the next pass halts on it). */
  #unconsumed(c: Connection): boolean {
    return c.ring.getU32(SRING_REQ_PROD) !== c.reqCons;
  }

  /** One pass: copy, parse, serve, respond, push. Returns requests served, or -1 for an impossible req_prod. */
  #pass(c: Connection): number {
    this.#stats.passes++;
    const reqProd = c.ring.getU32(SRING_REQ_PROD);
    const available = (reqProd - c.reqCons) >>> 0;
    const n = Math.min(available, this.#options.maxBatch ?? DEFAULT_MAX_BATCH, c.entries);
    const heap = c.heap.u8;
    heap.fill(0, c.mirror, c.mirror + SRING_HEADER_SIZE);
    new DataView(heap.buffer, c.mirror, SRING_HEADER_SIZE).setUint32(SRING_REQ_PROD, reqProd, true);
    // Only slots the parser will take are copied: none when req_prod is impossible (the parser says so).
    if (((reqProd - c.rspProdPvt) >>> 0) <= c.entries) {
      for (let i = 0; i < n; i++) {
        const at = SRING_HEADER_SIZE + (((c.reqCons + i) & (c.entries - 1)) >>> 0) * c.layout.entrySize;
        c.ring.read(at, heap, c.mirror + at, c.layout.entrySize);
      }
    }
    const result = c.parser.parse(c.reqCons, c.rspProdPvt, n);
    if (result.overflow) return -1;
    for (let i = 0; i < result.count; i++) {
      const request = c.parser.request(i);
      const { status, operation } = c.executor.execute(request);
      if (this.#connection !== c) return i;
      this.#respond(c, request.id, operation, status);
    }
    c.reqCons = result.reqCons;
    this.#stats.requests += result.count;
    if (result.count > 0) this.#push(c);
    return result.count;
  }

  /** Writes a whole response (every byte of the ABI's struct) into the slot at rsp_prod_pvt. */
  #respond(c: Connection, id: bigint, operation: number, status: number): void {
    const bytes = this.#response;
    const view = new DataView(bytes.buffer);
    bytes.fill(0);
    view.setBigUint64(RESPONSE_ID, id, true);
    view.setUint8(RESPONSE_OPERATION, operation);
    view.setInt16(RESPONSE_STATUS, status, true);
    const at = SRING_HEADER_SIZE + ((c.rspProdPvt & (c.entries - 1)) >>> 0) * c.layout.entrySize;
    c.ring.write(at, bytes, 0, c.layout.responseSize);
    c.rspProdPvt = (c.rspProdPvt + 1) >>> 0;
  }

  /** RING_PUSH_RESPONSES_AND_CHECK_NOTIFY: publish, then notify only if rsp_event lies in (old, new]. */
  #push(c: Connection): void {
    const old = c.rspProd;
    const next = c.rspProdPvt;
    c.ring.setU32(SRING_RSP_PROD, next);
    c.rspProd = next;
    const event = c.ring.getU32(SRING_RSP_EVENT);
    if (((next - event) >>> 0) < ((next - old) >>> 0)) {
      this.#stats.notifications++;
      this.#options.channels.notify(this.#options.backendDomid, c.port);
    }
  }
}
