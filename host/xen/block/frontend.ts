/**
 * A blkfront-like xen-block frontend in TypeScript (after Linux's xen-blkfront): it grants the
 * ring pages and data pages from its own memory, writes ring-ref or ring-page-order and
 * ring-ref0..N-1, event-channel and protocol, builds requests in either ABI, publishes them with
 * RING_PUSH_REQUESTS_AND_CHECK_NOTIFY semantics and collects responses with
 * RING_FINAL_CHECK_FOR_RESPONSES (io/ring.h). Tests and the benchmark drive a backend with it;
 * its low-level calls ({@link XenBlockFrontend.enqueue}, {@link XenBlockFrontend.ring}) let a test
 * play a hostile guest.
 *
 * The frontend owns a range of frames of its memory: the first 16 hold the ring (whatever order
 * is used), the rest are data and indirect pages, handed out per request and taken back when its
 * response arrives. Requests wait for a free slot and free pages, so at most a ring's worth is
 * outstanding.
 */

import { ErrorCode, TandemError } from "../../errors.ts";
import { GuestMemory } from "../../memory/guest-memory.ts";
import type { EventChannels } from "../event-channel.ts";
import type { GrantTable } from "../grants/grant-table.ts";
import {
  BLKIF_SECTOR_SIZE, BlkifOp, MAX_RING_PAGES, MAX_SEGMENTS_PER_REQUEST, RESPONSE_ID, RESPONSE_OPERATION, RESPONSE_STATUS,
  RING_PAGE_SIZE, SEGMENT_FIRST_SECT, SEGMENT_GREF, SEGMENT_LAST_SECT, SEGMENT_SIZE, SEGMENTS_PER_INDIRECT_PAGE,
  SRING_HEADER_SIZE, SRING_REQ_EVENT, SRING_REQ_PROD, SRING_RSP_EVENT, SRING_RSP_PROD, abiForProtocol, layoutFor, ringEntries,
  type BlkifProtocol, type RequestLayout,
} from "../blkif/ring-layout.ts";
import type { BlkifSegment } from "../blkif/request-parser.ts";
import { XenbusFrontend } from "../xenbus/frontend.ts";
import type { XenbusKeys, XenbusReader } from "../xenbus/keys.ts";
import { XenbusState } from "../xenbus/states.ts";
import type { XenbusStore } from "../xenbus/xenbus-store.ts";
import { RingPages } from "./ring-pages.ts";

/** Sectors of 512 bytes in a page. */
const SECTORS_PER_PAGE = RING_PAGE_SIZE / BLKIF_SECTOR_SIZE;

/** How a frontend is set up. */
export interface XenBlockFrontendOptions {
  /** The frontend domain's store connection. */
  store: XenbusStore;
  /** The virtual-device number (the device id). */
  devid: number;
  /** This domain's grant table, over `memory`. */
  grants: GrantTable;
  /** This domain's memory (the grant table's). */
  memory: GuestMemory | Uint8Array;
  channels: EventChannels;
  /** Frames of `memory` the frontend may use: 16 for the ring, then data pages (at least 11 more). */
  frames: { first: number; count: number };
  /** The ABI to speak and the `protocol` key to write; default "x86_64-abi". */
  protocol?: BlkifProtocol;
  /** Leave the `protocol` key out (the backend then assumes native). */
  omitProtocol?: boolean;
  /** The ring-page-order wanted; the backend's max-ring-page-order caps it. Default 4. */
  ringPageOrder?: number;
  /** The ring's first index (SHARED_RING_INIT starts at 0; tests start near 2^32 to cross the wrap). */
  startIndex?: number;
  /** Changes the keys before they are published (tests: a hostile frontend). */
  tamperKeys?: (keys: Record<string, string | number>) => Record<string, string | number>;
  onError?: (error: unknown) => void;
}

/** A response as copied out of the ring. */
export interface BlkifResponse {
  id: bigint;
  operation: number;
  status: number;
}

/** A request to write into the ring, in terms of the blkif.h fields (absent fields are zero). */
export interface FrontendRequest {
  operation: number;
  /** Read/write/flush/barrier segments (at most 11 are written). */
  segments?: readonly BlkifSegment[];
  /** nr_segments to write, when it should differ from the segments given (a hostile request). */
  nrSegments?: number;
  sector?: bigint;
  handle?: number;
  /** Discard: nr_sectors and flag. */
  discard?: { nrSectors: bigint; flag?: number };
  /** Indirect: the inner operation, the segment count and the indirect page grants. */
  indirect?: { operation: number; nrSegments: number; grefs: readonly number[] };
  /** The request id; default the next of the frontend's own counter. */
  id?: bigint;
}

/** What a high-level call returns: the response status and, for reads, the data. */
export interface BlockResult {
  status: number;
  data?: Uint8Array;
}

/** What the backend published, read when it went Connected. */
export interface BackendProperties {
  sectors: number;
  sectorSize: number;
  info: number;
  flush: boolean;
  barrier: boolean;
  discard: boolean;
  maxIndirectSegments: number;
}

interface Waiter {
  pages: number;
  resolve: (frames: number[]) => void;
}

function parseU32(text: string | undefined): number | undefined {
  if (text === undefined || !/^[0-9]{1,10}$/.test(text)) return undefined;
  const value = Number(text);
  return value <= 0xffffffff ? value : undefined;
}

/** One xen-block frontend device. */
export class XenBlockFrontend {
  readonly xenbus: XenbusFrontend;
  readonly #options: XenBlockFrontendOptions;
  readonly #layout: RequestLayout;
  readonly #pending = new Map<bigint, (response: BlkifResponse) => void>();
  readonly #waiters: Waiter[] = [];
  readonly #freePages: number[] = [];
  /** Grants the backend still held when they were to be ended; retried later. */
  readonly #lingering: number[] = [];
  #ring: RingPages | undefined;
  #ringRefs: number[] = [];
  #entries = 0;
  #port: number | undefined;
  #reqProdPvt = 0;
  #rspCons = 0;
  #nextId = 1n;
  /** Slots promised to high-level calls that have not enqueued yet. */
  #heldSlots = 0;
  #properties: BackendProperties | undefined;

  constructor(options: XenBlockFrontendOptions) {
    const { first, count } = options.frames;
    if (!Number.isInteger(first) || !Number.isInteger(count) || first < 0 || count < MAX_RING_PAGES + MAX_SEGMENTS_PER_REQUEST || first + count > options.grants.frameCount) {
      throw new TandemError(ErrorCode.BadArgument, `frontend frames ${first}+${count}: need at least ${MAX_RING_PAGES + MAX_SEGMENTS_PER_REQUEST} frames inside the domain's ${options.grants.frameCount}`);
    }
    this.#options = options;
    this.#layout = layoutFor(abiForProtocol(options.protocol ?? "x86_64-abi"));
    for (let frame = first + count - 1; frame >= first + MAX_RING_PAGES; frame--) this.#freePages.push(frame);
    this.xenbus = new XenbusFrontend({
      store: options.store,
      type: "vbd",
      devid: options.devid,
      device: { initialise: (backend) => this.#initialise(backend), connect: (backend) => this.#connect(backend), disconnect: () => this.#disconnect() },
      onError: options.onError,
    });
  }

  /** Starts the xenbus frontend; {@link connected} resolves once both ends are Connected. */
  start(): void {
    this.xenbus.start();
  }

  /** Resolves once Connected (E_TIMEOUT after `ms`). */
  async connected(ms = 5000): Promise<BackendProperties> {
    await this.xenbus.reached(XenbusState.Connected, ms);
    return this.properties;
  }

  /** What the backend published (once Connected). */
  get properties(): BackendProperties {
    if (this.#properties === undefined) throw new TandemError(ErrorCode.InvalidState, `xen-block frontend ${this.xenbus.path} is not connected`);
    return this.#properties;
  }

  /** The shared ring (tests write hostile slots and indices through it). */
  get ring(): RingPages {
    if (this.#ring === undefined) throw new TandemError(ErrorCode.InvalidState, `xen-block frontend ${this.xenbus.path} has no ring`);
    return this.#ring;
  }

  /** Slots in the ring. */
  get entries(): number {
    return this.#entries;
  }

  /** The request layout in use. */
  get layout(): RequestLayout {
    return this.#layout;
  }

  /** The private request producer: the index the next {@link enqueue} writes. */
  get reqProdPvt(): number {
    return this.#reqProdPvt;
  }

  /** Requests posted and not yet answered. */
  get outstanding(): number {
    return this.#pending.size;
  }

  /** Starts a disconnect from this side (Closing, then Closed once the backend closes). */
  close(): void {
    this.xenbus.close();
  }

  // ---- low level: slots, indices, responses ----

  /**
   * Writes `request` into the slot at req_prod_pvt (every byte of the slot: unused ones zero) and
   * advances req_prod_pvt; nothing is published until {@link push}. Returns the id and a promise
   * of its response. No flow control: the caller keeps to a ring's worth.
   */
  enqueue(request: FrontendRequest): { id: bigint; response: Promise<BlkifResponse> } {
    const ring = this.ring;
    const l = this.#layout;
    const id = request.id ?? this.#nextId++;
    const slot = new Uint8Array(l.entrySize);
    const view = new DataView(slot.buffer);
    view.setUint8(l.operation, request.operation);
    view.setBigUint64(l.id, id, true);
    view.setBigUint64(l.sectorNumber, request.sector ?? 0n, true);
    if (request.discard !== undefined) {
      view.setUint8(l.nrSegments, request.discard.flag ?? 0);
      view.setUint16(l.handle, request.handle ?? 0, true);
      view.setBigUint64(l.discardNrSectors, request.discard.nrSectors, true);
    } else if (request.indirect !== undefined) {
      view.setUint8(l.nrSegments, request.indirect.operation);
      view.setUint16(l.handle, request.indirect.nrSegments, true);
      view.setUint16(l.indirectHandle, request.handle ?? 0, true);
      request.indirect.grefs.slice(0, 8).forEach((gref, i) => view.setUint32(l.indirectGrefs + 4 * i, gref, true));
    } else {
      const segments = request.segments ?? [];
      view.setUint8(l.nrSegments, request.nrSegments ?? segments.length);
      view.setUint16(l.handle, request.handle ?? 0, true);
      segments.slice(0, MAX_SEGMENTS_PER_REQUEST).forEach((s, i) => writeSegment(view, l.segments + i * SEGMENT_SIZE, s));
    }
    ring.write(SRING_HEADER_SIZE + ((this.#reqProdPvt & (this.#entries - 1)) >>> 0) * l.entrySize, slot);
    this.#reqProdPvt = (this.#reqProdPvt + 1) >>> 0;
    const response = new Promise<BlkifResponse>((resolve) => this.#pending.set(id, resolve));
    return { id, response };
  }

  /** RING_PUSH_REQUESTS_AND_CHECK_NOTIFY: publishes req_prod and notifies if the backend's req_event asks. Returns whether it notified. */
  push(): boolean {
    const ring = this.ring;
    const old = ring.getU32(SRING_REQ_PROD);
    const next = this.#reqProdPvt;
    ring.setU32(SRING_REQ_PROD, next);
    const event = ring.getU32(SRING_REQ_EVENT);
    if (((next - event) >>> 0) < ((next - old) >>> 0) && this.#port !== undefined) {
      this.#options.channels.notify(this.#options.store.domid, this.#port);
      return true;
    }
    return false;
  }

  /** Sends an event whatever the indices say (a guest may always kick). */
  kick(): void {
    if (this.#port !== undefined) this.#options.channels.notify(this.#options.store.domid, this.#port);
  }

  /** Grants `frame` of this domain's memory to the backend (read-only if `readonly`). */
  grant(frame: number, readonly: boolean): number {
    return this.#options.grants.grantAccess(this.xenbus.backendDomid, frame, readonly);
  }

  /** A frame's bytes (a view of this domain's memory). */
  frameBytes(frame: number): Uint8Array {
    return this.#memory().subarray(frame * RING_PAGE_SIZE, (frame + 1) * RING_PAGE_SIZE);
  }

  // ---- high level: whole requests with their data pages ----

  /** Reads `sectors` 512-byte sectors from `sector` (at most 88; more with {@link readIndirect}). */
  read(sector: bigint, sectors: number): Promise<BlockResult> {
    return this.#transfer(BlkifOp.Read, sector, sectors, undefined, false);
  }

  /** Writes `data` (a multiple of 512 bytes, at most 44 KiB) at `sector`. */
  write(sector: bigint, data: Uint8Array): Promise<BlockResult> {
    return this.#transfer(BlkifOp.Write, sector, data.length / BLKIF_SECTOR_SIZE, data, false);
  }

  /** Reads through an indirect request (up to the backend's feature-max-indirect-segments pages). */
  readIndirect(sector: bigint, sectors: number): Promise<BlockResult> {
    return this.#transfer(BlkifOp.Read, sector, sectors, undefined, true);
  }

  /** Writes through an indirect request. */
  writeIndirect(sector: bigint, data: Uint8Array): Promise<BlockResult> {
    return this.#transfer(BlkifOp.Write, sector, data.length / BLKIF_SECTOR_SIZE, data, true);
  }

  /** BLKIF_OP_FLUSH_DISKCACHE without data. */
  flush(): Promise<BlockResult> {
    return this.#simple({ operation: BlkifOp.FlushDiskcache });
  }

  /** BLKIF_OP_WRITE_BARRIER, with data to write (or none). */
  barrier(sector = 0n, data?: Uint8Array): Promise<BlockResult> {
    if (data === undefined) return this.#simple({ operation: BlkifOp.WriteBarrier, sector });
    return this.#transfer(BlkifOp.WriteBarrier, sector, data.length / BLKIF_SECTOR_SIZE, data, false);
  }

  /** BLKIF_OP_DISCARD of `sectors` sectors from `sector` (`secure` sets BLKIF_DISCARD_SECURE). */
  discard(sector: bigint, sectors: bigint, secure = false): Promise<BlockResult> {
    return this.#simple({ operation: BlkifOp.Discard, sector, discard: { nrSectors: sectors, flag: secure ? 1 : 0 } });
  }

  /** Any request without data pages (an unknown operation, say). */
  async #simple(request: FrontendRequest): Promise<BlockResult> {
    await this.#reserve(0);
    this.#heldSlots--;
    const { response } = this.enqueue(request);
    this.push();
    return { status: (await response).status };
  }

  async #transfer(operation: number, sector: bigint, sectors: number, data: Uint8Array | undefined, indirect: boolean): Promise<BlockResult> {
    if (!Number.isInteger(sectors) || sectors <= 0) throw new TandemError(ErrorCode.BadArgument, `a transfer of ${sectors} sectors: expected a positive whole number of 512-byte sectors`);
    const pages = Math.ceil(sectors / SECTORS_PER_PAGE);
    const limit = indirect ? this.properties.maxIndirectSegments : MAX_SEGMENTS_PER_REQUEST;
    if (pages > limit) throw new TandemError(ErrorCode.BadArgument, `${sectors} sectors need ${pages} segments; this request carries at most ${limit}`);
    const indirectPages = indirect ? Math.ceil(pages / SEGMENTS_PER_INDIRECT_PAGE) : 0;
    const frames = await this.#reserve(pages + indirectPages);
    const toBackend = data !== undefined;
    const refs: number[] = [];
    let held = true;
    try {
      const segments: BlkifSegment[] = [];
      for (let p = 0; p < pages; p++) {
        const count = Math.min(SECTORS_PER_PAGE, sectors - p * SECTORS_PER_PAGE);
        if (data !== undefined) this.frameBytes(frames[p]).set(data.subarray(p * RING_PAGE_SIZE, p * RING_PAGE_SIZE + count * BLKIF_SECTOR_SIZE));
        const gref = this.grant(frames[p], toBackend);
        refs.push(gref);
        segments.push({ gref, firstSect: 0, lastSect: count - 1 });
      }
      let request: FrontendRequest = { operation, sector, segments };
      if (indirect) {
        const grefs: number[] = [];
        for (let i = 0; i < indirectPages; i++) {
          const frame = frames[pages + i];
          const view = new DataView(this.#memory().buffer, this.#memory().byteOffset + frame * RING_PAGE_SIZE, RING_PAGE_SIZE);
          segments.slice(i * SEGMENTS_PER_INDIRECT_PAGE, (i + 1) * SEGMENTS_PER_INDIRECT_PAGE).forEach((s, k) => writeSegment(view, k * SEGMENT_SIZE, s));
          const gref = this.grant(frame, true);
          refs.push(gref);
          grefs.push(gref);
        }
        request = { operation: BlkifOp.Indirect, sector, indirect: { operation, nrSegments: pages, grefs } };
      }
      this.#heldSlots--;
      held = false;
      const { response } = this.enqueue(request);
      this.push();
      const { status } = await response;
      if (data !== undefined) return { status };
      const out = new Uint8Array(sectors * BLKIF_SECTOR_SIZE);
      for (let p = 0; p < pages; p++) out.set(this.frameBytes(frames[p]).subarray(0, Math.min(RING_PAGE_SIZE, out.length - p * RING_PAGE_SIZE)), p * RING_PAGE_SIZE);
      return { status, data: out };
    } finally {
      if (held) this.#heldSlots--;
      for (const ref of refs) this.#endAccess(ref);
      this.#release(frames);
    }
  }

  /**
   * Waits for a ring slot and `pages` data pages, and takes them: the pages are returned, the
   * slot is held until the caller's {@link enqueue} (which must follow at once).
   */
  async #reserve(pages: number): Promise<number[]> {
    if (pages > this.#options.frames.count - MAX_RING_PAGES) throw new TandemError(ErrorCode.BadArgument, `a request needing ${pages} pages: the frontend has ${this.#options.frames.count - MAX_RING_PAGES}`);
    // Waiters are served in order, so a large request is not overtaken forever.
    if (this.#waiters.length === 0 && this.#fits(pages)) return this.#take(pages);
    return new Promise<number[]>((resolve) => {
      this.#waiters.push({ pages, resolve });
      this.#admit();
    });
  }

  #fits(pages: number): boolean {
    const inRing = ((this.#reqProdPvt - this.#rspCons) >>> 0) + this.#heldSlots;
    return this.#ring !== undefined && this.#properties !== undefined && inRing < this.#entries && this.#freePages.length >= pages;
  }

  #take(pages: number): number[] {
    this.#heldSlots++;
    return this.#freePages.splice(this.#freePages.length - pages, pages);
  }

  #release(frames: number[]): void {
    this.#freePages.push(...frames);
    this.#admit();
  }

  #admit(): void {
    while (this.#waiters.length > 0 && this.#fits(this.#waiters[0].pages)) {
      const waiter = this.#waiters.shift()!;
      waiter.resolve(this.#take(waiter.pages));
    }
  }

  #endAccess(ref: number): void {
    try {
      this.#options.grants.endAccess(ref);
    } catch (error) {
      if (error instanceof TandemError && error.code === ErrorCode.GrantInUse) this.#lingering.push(ref);
      else throw error;
    }
  }

  #memory(): Uint8Array {
    const memory = this.#options.memory;
    return memory instanceof GuestMemory ? memory.bytes() : memory;
  }

  // ---- xenbus ----

  #initialise(backend: XenbusReader): XenbusKeys {
    this.#retryLingering();
    const options = this.#options;
    const maxOrder = parseU32(backend.read("max-ring-page-order")) ?? 0;
    const order = Math.min(options.ringPageOrder ?? 4, maxOrder, 4);
    const pages = 1 << order;
    const { first } = options.frames;
    const start = (options.startIndex ?? 0) >>> 0;
    const ring = new RingPages(Array.from({ length: pages }, (_, i) => () => this.frameBytes(first + i)));
    for (let i = 0; i < pages; i++) this.frameBytes(first + i).fill(0);
    // SHARED_RING_INIT, at `start`: both producers there, both events one past.
    ring.setU32(SRING_REQ_PROD, start);
    ring.setU32(SRING_RSP_PROD, start);
    ring.setU32(SRING_REQ_EVENT, (start + 1) >>> 0);
    ring.setU32(SRING_RSP_EVENT, (start + 1) >>> 0);
    this.#ring = ring;
    this.#entries = ringEntries(pages, abiForProtocol(options.protocol ?? "x86_64-abi"));
    this.#reqProdPvt = start;
    this.#rspCons = start;
    this.#ringRefs = Array.from({ length: pages }, (_, i) => this.grant(first + i, false));
    const port = options.channels.allocUnbound(options.store.domid, this.xenbus.backendDomid);
    this.#port = port;
    options.channels.onEvent(options.store.domid, port, () => this.#collect());
    const keys: Record<string, string | number> = { "event-channel": port };
    if (order === 0) keys["ring-ref"] = this.#ringRefs[0];
    else {
      keys["ring-page-order"] = order;
      this.#ringRefs.forEach((ref, i) => (keys[`ring-ref${i}`] = ref));
    }
    if (!options.omitProtocol) keys.protocol = options.protocol ?? "x86_64-abi";
    return options.tamperKeys ? options.tamperKeys(keys) : keys;
  }

  #connect(backend: XenbusReader): void {
    const flag = (key: string) => backend.read(key) === "1";
    const sectorsText = backend.read("sectors");
    const sectors = sectorsText !== undefined && /^[0-9]{1,16}$/.test(sectorsText) ? Number(sectorsText) : NaN;
    if (!Number.isSafeInteger(sectors)) throw new TandemError(ErrorCode.BadArgument, `the backend's sectors '${String(sectorsText).slice(0, 32)}' is not a decimal size below 2^53`);
    this.#properties = {
      sectors,
      sectorSize: parseU32(backend.read("sector-size")) ?? BLKIF_SECTOR_SIZE,
      info: parseU32(backend.read("info")) ?? 0,
      flush: flag("feature-flush-cache"),
      barrier: flag("feature-barrier"),
      discard: flag("feature-discard"),
      maxIndirectSegments: parseU32(backend.read("feature-max-indirect-segments")) ?? 0,
    };
    this.#admit();
  }

  #disconnect(): void {
    const { channels, store } = this.#options;
    if (this.#port !== undefined && channels.state(store.domid, this.#port) !== "free") channels.close(store.domid, this.#port);
    this.#port = undefined;
    for (const ref of this.#ringRefs) this.#endAccess(ref);
    this.#ringRefs = [];
    this.#ring = undefined;
    this.#properties = undefined;
    // Requests of the old ring will never be answered; their callers' promises stay pending.
    this.#pending.clear();
  }

  #retryLingering(): void {
    for (const ref of this.#lingering.splice(0)) this.#endAccess(ref);
  }

  /** Takes every published response (each copied once), then RING_FINAL_CHECK_FOR_RESPONSES. */
  #collect(): void {
    const ring = this.#ring;
    if (ring === undefined) return;
    for (;;) {
      const rspProd = ring.getU32(SRING_RSP_PROD);
      const count = (rspProd - this.#rspCons) >>> 0;
      if (count > this.#entries) {
        // RING_RESPONSE_PROD_OVERFLOW: a backend that claims more than a ring; stop listening to it.
        this.#options.onError?.(new TandemError(ErrorCode.OutOfRange, `xen-block frontend ${this.xenbus.path}: rsp_prod ${rspProd} is more than a ring past rsp_cons ${this.#rspCons}`));
        return;
      }
      const bytes = new Uint8Array(this.#layout.responseSize);
      const view = new DataView(bytes.buffer);
      for (let i = 0; i < count; i++) {
        ring.read(SRING_HEADER_SIZE + (((this.#rspCons + i) & (this.#entries - 1)) >>> 0) * this.#layout.entrySize, bytes);
        const response = { id: view.getBigUint64(RESPONSE_ID, true), operation: view.getUint8(RESPONSE_OPERATION), status: view.getInt16(RESPONSE_STATUS, true) };
        const resolve = this.#pending.get(response.id);
        this.#pending.delete(response.id);
        resolve?.(response);
      }
      this.#rspCons = rspProd;
      ring.setU32(SRING_RSP_EVENT, (this.#rspCons + 1) >>> 0);
      if (ring.getU32(SRING_RSP_PROD) === this.#rspCons) break;
    }
    this.#admit();
  }
}

function writeSegment(view: DataView, at: number, segment: BlkifSegment): void {
  view.setUint32(at + SEGMENT_GREF, segment.gref, true);
  view.setUint8(at + SEGMENT_FIRST_SECT, segment.firstSect);
  view.setUint8(at + SEGMENT_LAST_SECT, segment.lastSect);
}
