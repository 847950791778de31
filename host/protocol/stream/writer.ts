/** Writes checkpoint stream bytes (see format.ts and docs/checkpoint-stream.md). */

import { ErrorCode, TandemError } from "../../errors.ts";
import {
  FIELD_HEAD_SIZE, F_KIND, F_NAME_LENGTH, F_RESERVED, F_VALUE_LENGTH, HEADER_SIZE, H_FLAGS, H_MAGIC, H_PAGE_SIZE, H_REGIONS,
  H_VERSION, HeaderFlag, IDENTITY_HEAD_SIZE, I_COUNT, I_LENGTH, IdentityKind, MAGIC, MAX_FIELD_NAME_BYTES, MAX_FIELD_VALUE_BYTES,
  MAX_IDENTITY_FIELDS, MAX_REGIONS, RECORD_ALIGN, RECORD_HEADER_SIZE, REC_LENGTH, REC_TYPE, REGION_SIZE, RecordType, R_FLAGS,
  R_RESERVED, R_SIZE, VERSION, padTo, type StreamHeader,
  BASE_IDENTITY_BYTES, DSB_BASE_IDENTITY, DSB_BASE_SIZE, DSB_DISK, DSB_DISK_SIZE, DSB_LINEAGE, DSB_MODE, DSB_SINCE, DSB_SIZE,
  LINEAGE_BYTES, type DiskSyncMode,
} from "./format.ts";

const ENCODER = new TextEncoder();

/** Builds stream bytes: the header once, then records; `take()` hands over what was written. */
export class StreamWriter {
  readonly #header: StreamHeader;
  /** The identity section's fields, encoded (name, value), when the header has one. */
  #identity: { name: Uint8Array; value: Uint8Array; kind: number }[] | undefined;
  #bytes = new Uint8Array(64 * 1024);
  #view = new DataView(this.#bytes.buffer);
  #length = 0;

  constructor(header: StreamHeader) {
    const { pageSize, regions } = header;
    if (!Number.isInteger(pageSize) || pageSize <= 0 || (pageSize & (pageSize - 1)) !== 0) {
      throw new TandemError(ErrorCode.BadArgument, `page size ${pageSize}: expected a power of two`);
    }
    if (regions.length === 0 || regions.length > MAX_REGIONS) {
      throw new TandemError(ErrorCode.BadArgument, `${regions.length} regions: expected 1 to ${MAX_REGIONS}`);
    }
    for (const { size } of regions) {
      if (!Number.isSafeInteger(size) || size <= 0 || size % pageSize !== 0) {
        throw new TandemError(ErrorCode.BadArgument, `region size ${size}: expected a positive multiple of ${pageSize}`);
      }
    }
    this.#header = { pageSize, regions: regions.map((r) => ({ size: r.size })) };
    if (header.identity) {
      this.#identity = encodeIdentity(header.identity);
      this.#header.identity = header.identity.map((f) => ({ ...f }));
    }
  }

  /** Bytes written and not yet taken. */
  get length(): number {
    return this.#length;
  }

  /** The stream header: magic, version, page size, the guest's memory regions, its identity if any. */
  writeHeader(): void {
    const { pageSize, regions } = this.#header;
    const at = this.#reserve(HEADER_SIZE + regions.length * REGION_SIZE);
    this.#bytes.set(MAGIC, at + H_MAGIC);
    this.#view.setUint32(at + H_VERSION, VERSION, true);
    this.#view.setUint32(at + H_PAGE_SIZE, pageSize, true);
    this.#view.setUint32(at + H_REGIONS, regions.length, true);
    this.#view.setUint32(at + H_FLAGS, this.#identity ? HeaderFlag.Identity : 0, true);
    regions.forEach((r, i) => {
      const d = at + HEADER_SIZE + i * REGION_SIZE;
      this.#u64(d + R_SIZE, r.size);
      this.#view.setUint32(d + R_FLAGS, 0, true);
      this.#view.setUint32(d + R_RESERVED, 0, true);
    });
    if (this.#identity) this.#writeIdentity(this.#identity);
  }

  #writeIdentity(fields: readonly { name: Uint8Array; value: Uint8Array; kind: number }[]): void {
    const length = fields.reduce((n, f) => n + FIELD_HEAD_SIZE + padTo(f.name.length + f.value.length, 8), IDENTITY_HEAD_SIZE);
    const start = this.#reserve(length);
    this.#bytes.fill(0, start, start + length);
    this.#view.setUint32(start + I_LENGTH, length, true);
    this.#view.setUint32(start + I_COUNT, fields.length, true);
    let at = start + IDENTITY_HEAD_SIZE;
    for (const { name, value, kind } of fields) {
      this.#view.setUint8(at + F_KIND, kind);
      this.#view.setUint8(at + F_RESERVED, 0);
      this.#view.setUint16(at + F_NAME_LENGTH, name.length, true);
      this.#view.setUint32(at + F_VALUE_LENGTH, value.length, true);
      this.#bytes.set(name, at + FIELD_HEAD_SIZE);
      this.#bytes.set(value, at + FIELD_HEAD_SIZE + name.length);
      at += FIELD_HEAD_SIZE + padTo(name.length + value.length, 8);
    }
  }

  /** Full pages: `page(pfn)` gives each page's bytes. */
  pages(region: number, pfns: ArrayLike<number>, page: (pfn: number) => Uint8Array): void {
    const size = this.#header.pageSize;
    this.#checkPfns(region, pfns);
    const listEnd = padTo(8 + pfns.length * 4, 8);
    const body = this.#record(RecordType.Pages, listEnd + pfns.length * size);
    this.#view.setUint32(body, region, true);
    this.#view.setUint32(body + 4, pfns.length, true);
    this.#bytes.fill(0, body + 8 + pfns.length * 4, body + listEnd);
    for (let i = 0; i < pfns.length; i++) {
      this.#view.setUint32(body + 8 + i * 4, pfns[i], true);
      const bytes = page(pfns[i]);
      if (bytes.length !== size) throw new TandemError(ErrorCode.BadArgument, `page ${pfns[i]} has ${bytes.length} bytes, expected ${size}`);
      this.#bytes.set(bytes, body + listEnd + i * size);
    }
  }

  /**
   * Full pages whose bytes lie back to back in `data`, in list order (as a page gatherer leaves
   * them): one copy for the whole record.
   */
  pagesFrom(region: number, pfns: ArrayLike<number>, data: Uint8Array): void {
    const size = this.#header.pageSize;
    this.#checkPfns(region, pfns);
    if (data.length !== pfns.length * size) {
      throw new TandemError(ErrorCode.BadArgument, `${data.length} bytes for ${pfns.length} pages of ${size}`);
    }
    const listEnd = padTo(8 + pfns.length * 4, 8);
    const body = this.#record(RecordType.Pages, listEnd + data.length);
    this.#view.setUint32(body, region, true);
    this.#view.setUint32(body + 4, pfns.length, true);
    for (let i = 0; i < pfns.length; i++) this.#view.setUint32(body + 8 + i * 4, pfns[i], true);
    this.#bytes.fill(0, body + 8 + pfns.length * 4, body + listEnd);
    this.#bytes.set(data, body + listEnd);
  }

  /** Pages that are all zero. */
  zeroPages(region: number, pfns: ArrayLike<number>): void {
    this.#checkPfns(region, pfns);
    const body = this.#record(RecordType.ZeroPages, 8 + pfns.length * 4);
    this.#view.setUint32(body, region, true);
    this.#view.setUint32(body + 4, pfns.length, true);
    for (let i = 0; i < pfns.length; i++) this.#view.setUint32(body + 8 + i * 4, pfns[i], true);
  }

  /** Page deltas (assembly/delta.ts format) against the receiver's copies. */
  deltaPages(region: number, pages: readonly { pfn: number; delta: Uint8Array }[]): void {
    this.#checkPfns(region, pages.map((p) => p.pfn));
    const size = pages.reduce((n, p) => n + 8 + padTo(p.delta.length, 4), 8);
    let at = this.#record(RecordType.DeltaPages, size);
    this.#view.setUint32(at, region, true);
    this.#view.setUint32(at + 4, pages.length, true);
    at += 8;
    for (const { pfn, delta } of pages) {
      this.#view.setUint32(at, pfn, true);
      this.#view.setUint32(at + 4, delta.length, true);
      this.#bytes.set(delta, at + 8);
      this.#bytes.fill(0, at + 8 + delta.length, at + 8 + padTo(delta.length, 4));
      at += 8 + padTo(delta.length, 4);
    }
  }

  /** The device state of `device`: opaque bytes from the emulator. */
  deviceState(device: number, data: Uint8Array): void {
    this.#checkU32(device, "device");
    const body = this.#record(RecordType.DeviceState, 8 + data.length);
    this.#view.setUint32(body, device, true);
    this.#view.setUint32(body + 4, 0, true);
    this.#bytes.set(data, body + 8);
  }

  /** The state of `device` as a delta against the previous checkpoint's (protocol/device-delta.ts). */
  deviceStateDelta(device: number, delta: Uint8Array): void {
    this.#checkU32(device, "device");
    const body = this.#record(RecordType.DeviceStateDelta, 8 + delta.length);
    this.#view.setUint32(body, device, true);
    this.#view.setUint32(body + 4, 0, true);
    this.#bytes.set(delta, body + 8);
  }

  /** Writes to `disk` made in this checkpoint's epoch, in order. */
  diskWrites(disk: number, writes: readonly { offset: number; data: Uint8Array }[]): void {
    this.#diskWrites(RecordType.DiskWrites, disk, writes);
  }

  /** Starts a background copy of `disk` (DISK_SYNC_BEGIN). */
  diskSyncBegin(begin: {
    disk: number; mode: DiskSyncMode; diskSize: number; lineage: Uint8Array; since: number; baseSize: number; baseIdentity: Uint8Array;
  }): void {
    this.#checkU32(begin.disk, "disk");
    if (begin.lineage.length !== LINEAGE_BYTES || begin.baseIdentity.length !== BASE_IDENTITY_BYTES) {
      throw new TandemError(ErrorCode.BadArgument, `a lineage of ${LINEAGE_BYTES} bytes and a base identity of ${BASE_IDENTITY_BYTES}`);
    }
    const at = this.#record(RecordType.DiskSyncBegin, DSB_SIZE);
    this.#view.setUint32(at + DSB_DISK, begin.disk, true);
    this.#view.setUint32(at + DSB_MODE, begin.mode, true);
    this.#u64(at + DSB_DISK_SIZE, begin.diskSize);
    this.#bytes.set(begin.lineage, at + DSB_LINEAGE);
    this.#u64(at + DSB_SINCE, begin.since);
    this.#u64(at + DSB_BASE_SIZE, begin.baseSize);
    this.#bytes.set(begin.baseIdentity, at + DSB_BASE_IDENTITY);
  }

  /** Blocks of a background copy of `disk`, as the primary's image holds them now. */
  diskSyncWrites(disk: number, writes: readonly { offset: number; data: Uint8Array }[]): void {
    this.#diskWrites(RecordType.DiskSyncWrites, disk, writes);
  }

  /** Ranges of a background copy of `disk` that read as zeros. */
  diskSyncZeroes(disk: number, ranges: readonly { offset: number; length: number }[]): void {
    this.#checkU32(disk, "disk");
    let at = this.#record(RecordType.DiskSyncZeroes, 8 + ranges.length * 16);
    this.#view.setUint32(at, disk, true);
    this.#view.setUint32(at + 4, ranges.length, true);
    at += 8;
    for (const { offset, length } of ranges) {
      this.#u64(at, offset);
      this.#u64(at + 8, length);
      at += 16;
    }
  }

  /** The background copy of `disk` is complete. */
  diskSyncDone(disk: number): void {
    this.#checkU32(disk, "disk");
    const at = this.#record(RecordType.DiskSyncDone, 8);
    this.#view.setUint32(at, disk, true);
    this.#view.setUint32(at + 4, 0, true);
  }

  #diskWrites(type: RecordType, disk: number, writes: readonly { offset: number; data: Uint8Array }[]): void {
    this.#checkU32(disk, "disk");
    const size = writes.reduce((n, w) => n + 16 + padTo(w.data.length, 8), 8);
    let at = this.#record(type, size);
    this.#view.setUint32(at, disk, true);
    this.#view.setUint32(at + 4, writes.length, true);
    at += 8;
    for (const { offset, data } of writes) {
      if (!Number.isSafeInteger(offset) || offset < 0) throw new TandemError(ErrorCode.BadArgument, `disk offset ${offset}`);
      this.#u64(at, offset);
      this.#view.setUint32(at + 8, data.length, true);
      this.#view.setUint32(at + 12, 0, true);
      this.#bytes.set(data, at + 16);
      this.#bytes.fill(0, at + 16 + data.length, at + 16 + padTo(data.length, 8));
      at += 16 + padTo(data.length, 8);
    }
  }

  /** The epoch's outputs, each with its sequence number and channel. */
  outputs(outputs: readonly { seq: number; channel: string; data: Uint8Array }[]): void {
    const names = outputs.map((o) => ENCODER.encode(o.channel));
    const size = outputs.reduce((n, o, i) => n + 16 + padTo(names[i].length + o.data.length, 8), 8);
    let at = this.#record(RecordType.Outputs, size);
    this.#view.setUint32(at, outputs.length, true);
    this.#view.setUint32(at + 4, 0, true);
    at += 8;
    outputs.forEach((o, i) => {
      if (!Number.isSafeInteger(o.seq) || o.seq < 0) throw new TandemError(ErrorCode.BadArgument, `output seq ${o.seq}`);
      if (names[i].length > 0xffff) throw new TandemError(ErrorCode.BadArgument, `a channel name of ${names[i].length} bytes`);
      const end = at + 16 + names[i].length + o.data.length;
      this.#u64(at, o.seq);
      this.#view.setUint16(at + 8, names[i].length, true);
      this.#view.setUint16(at + 10, 0, true);
      this.#view.setUint32(at + 12, o.data.length, true);
      this.#bytes.set(names[i], at + 16);
      this.#bytes.set(o.data, at + 16 + names[i].length);
      this.#bytes.fill(0, end, at + 16 + padTo(names[i].length + o.data.length, 8));
      at += 16 + padTo(names[i].length + o.data.length, 8);
    });
  }

  /** The end of the stream: the primary stopped on purpose (the standby must not take over). */
  end(): void {
    this.#record(RecordType.End, 0);
  }

  /** A migration's handover: the source has stopped for good; the destination runs from here. */
  handover(): void {
    this.#record(RecordType.Handover, 0);
  }

  /** Ends the checkpoint: everything since the previous end is one consistent state. */
  checkpointEnd(checkpoint: number, generation: number, lastSeq?: number): void {
    const body = this.#record(RecordType.CheckpointEnd, lastSeq === undefined ? 16 : 24);
    this.#u64(body, checkpoint);
    this.#u64(body + 8, generation);
    if (lastSeq !== undefined) this.#u64(body + 16, lastSeq);
  }

  /** The bytes written since the last take (a new array); the writer starts empty again. */
  take(): Uint8Array {
    const out = this.#bytes.slice(0, this.#length);
    this.#length = 0;
    return out;
  }

  /**
   * The bytes written since the last take as a view of the writer's own buffer, which the next
   * write reuses: no copy, and no new memory to fault in. For a caller that is done with the
   * bytes (sent and acknowledged) before it writes again.
   */
  takeView(): Uint8Array {
    const out = this.#bytes.subarray(0, this.#length);
    this.#length = 0;
    return out;
  }

  /** Appends a record header and zeroes the body's padding; returns where the body goes. */
  #record(type: RecordType, length: number): number {
    if (length > 0xffff_ffff) throw new TandemError(ErrorCode.PayloadTooLarge, `a ${length}-byte record; split it`);
    const at = this.#reserve(RECORD_HEADER_SIZE + padTo(length, RECORD_ALIGN));
    this.#view.setUint32(at + REC_TYPE, type, true);
    this.#view.setUint32(at + REC_LENGTH, length, true);
    const body = at + RECORD_HEADER_SIZE;
    this.#bytes.fill(0, body + length, body + padTo(length, RECORD_ALIGN));
    return body;
  }

  #reserve(n: number): number {
    const at = this.#length;
    if (at + n > this.#bytes.length) {
      const grown = new Uint8Array(Math.max(this.#bytes.length * 2, at + n));
      grown.set(this.#bytes.subarray(0, at));
      this.#bytes = grown;
      this.#view = new DataView(grown.buffer);
    }
    this.#length = at + n;
    return at;
  }

  #u64(at: number, value: number): void {
    this.#view.setUint32(at, value % 2 ** 32, true);
    this.#view.setUint32(at + 4, Math.floor(value / 2 ** 32), true);
  }

  #checkU32(value: number, what: string): void {
    if (!Number.isInteger(value) || value < 0 || value > 0xffff_ffff) throw new TandemError(ErrorCode.BadArgument, `${what} ${value}: expected a u32`);
  }

  #checkPfns(region: number, pfns: ArrayLike<number>): void {
    const r = this.#header.regions[region];
    if (!r) throw new TandemError(ErrorCode.BadArgument, `region ${region}: the stream has ${this.#header.regions.length}`);
    const pages = r.size / this.#header.pageSize;
    for (let i = 0; i < pfns.length; i++) {
      const pfn = pfns[i];
      if (!Number.isInteger(pfn) || pfn < 0 || pfn >= pages) throw new TandemError(ErrorCode.OutOfRange, `page ${pfn} is not in region ${region} (${pages} pages)`);
    }
  }
}

/** Checks an identity against the section's limits and encodes its names and values. */
function encodeIdentity(fields: StreamHeader["identity"] & object): { name: Uint8Array; value: Uint8Array; kind: number }[] {
  if (fields.length > MAX_IDENTITY_FIELDS) throw new TandemError(ErrorCode.BadArgument, `${fields.length} identity fields; the stream takes ${MAX_IDENTITY_FIELDS}`);
  return fields.map((f) => {
    const name = ENCODER.encode(f.name);
    const value = ENCODER.encode(f.value);
    if (name.length === 0 || name.length > MAX_FIELD_NAME_BYTES) throw new TandemError(ErrorCode.BadArgument, `identity field name "${f.name}": 1 to ${MAX_FIELD_NAME_BYTES} bytes`);
    if (value.length > MAX_FIELD_VALUE_BYTES) throw new TandemError(ErrorCode.BadArgument, `identity field "${f.name}" has ${value.length} bytes; the stream takes ${MAX_FIELD_VALUE_BYTES}`);
    if (!(f.kind in IdentityKind)) throw new TandemError(ErrorCode.BadArgument, `identity field "${f.name}" has kind ${String(f.kind)}`);
    return { name, value, kind: IdentityKind[f.kind] };
  });
}
