/**
 * Reads checkpoint stream bytes (see format.ts and docs/checkpoint-stream.md). The bytes come
 * from a peer, so nothing is trusted: every length is checked against what remains, every page
 * index against its region, every reserved field and padding byte must be zero, and anything
 * unknown is refused with a coded error rather than skipped.
 */

import { ErrorCode, TandemError } from "../../errors.ts";
import {
  FIELD_HEAD_SIZE, F_KIND, F_NAME_LENGTH, F_RESERVED, F_VALUE_LENGTH, HEADER_SIZE, H_FLAGS, H_MAGIC, H_PAGE_SIZE, H_REGIONS,
  H_VERSION, HeaderFlag, IDENTITY_HEAD_SIZE, I_COUNT, I_LENGTH, KNOWN_FLAGS, MAGIC, MAX_FIELD_NAME_BYTES, MAX_FIELD_VALUE_BYTES,
  MAX_IDENTITY_FIELDS, MAX_REGIONS, RECORD_ALIGN, RECORD_HEADER_SIZE, RECORD_NAMES, REC_LENGTH, REC_TYPE, REGION_SIZE, RecordType,
  R_FLAGS, R_RESERVED, R_SIZE, VERSION, padTo, type StreamHeader, type StreamIdentityField, type StreamRecord,
  BASE_IDENTITY_BYTES, DSB_BASE_IDENTITY, DSB_BASE_SIZE, DSB_DISK, DSB_DISK_SIZE, DSB_LINEAGE, DSB_MODE, DSB_SINCE, DSB_SIZE,
  DiskSyncMode, LINEAGE_BYTES,
} from "./format.ts";

const DECODER = new TextDecoder("utf-8", { fatal: true });

/** Parses a stream: its header first, then records, in as many calls as the bytes come in. */
export class StreamReader {
  #header: StreamHeader | undefined;

  /** The stream header, once read. */
  get header(): StreamHeader | undefined {
    return this.#header;
  }

  /**
   * Parses `bytes`, which must hold whole records (and, on the first call, the header before
   * them), as a transaction or a saved file does. Returns the records; byte fields are views
   * into `bytes`.
   */
  read(bytes: Uint8Array): StreamRecord[] {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let at = 0;
    if (!this.#header) at = this.#readHeader(bytes, view);
    const records: StreamRecord[] = [];
    while (at < bytes.length) {
      if (bytes.length - at < RECORD_HEADER_SIZE) fail(`${bytes.length - at} bytes at the end are too few for a record header`);
      const type = view.getUint32(at + REC_TYPE, true);
      const length = view.getUint32(at + REC_LENGTH, true);
      const body = at + RECORD_HEADER_SIZE;
      const end = body + padTo(length, RECORD_ALIGN);
      if (!(type in RECORD_NAMES)) {
        throw new TandemError(ErrorCode.StreamRecord, `record type ${type} at byte ${at} is not one this tandem knows`);
      }
      if (end > bytes.length) fail(`a ${RECORD_NAMES[type]} record of ${length} bytes at byte ${at} runs past the end (${bytes.length})`);
      zeros(bytes, body + length, end, `${RECORD_NAMES[type]} padding`);
      records.push(this.#record(type, bytes.subarray(body, body + length), new DataView(bytes.buffer, bytes.byteOffset + body, length)));
      at = end;
    }
    return records;
  }

  #readHeader(bytes: Uint8Array, view: DataView): number {
    if (bytes.length < HEADER_SIZE) fail(`a stream of ${bytes.length} bytes has no room for its ${HEADER_SIZE}-byte header`);
    for (let i = 0; i < MAGIC.length; i++) {
      if (bytes[H_MAGIC + i] !== MAGIC[i]) throw new TandemError(ErrorCode.StreamVersion, "not a tandem checkpoint stream (bad magic)");
    }
    const version = view.getUint32(H_VERSION, true);
    if (version !== VERSION) throw new TandemError(ErrorCode.StreamVersion, `stream version ${version}; this tandem reads version ${VERSION}`);
    const pageSize = view.getUint32(H_PAGE_SIZE, true);
    const count = view.getUint32(H_REGIONS, true);
    const flags = view.getUint32(H_FLAGS, true);
    if ((flags & ~KNOWN_FLAGS) !== 0) throw new TandemError(ErrorCode.StreamVersion, `stream flags 0x${flags.toString(16)} are not ones this tandem knows`);
    if (pageSize === 0 || (pageSize & (pageSize - 1)) !== 0 || pageSize > 1 << 21) fail(`page size ${pageSize}`);
    if (count === 0 || count > MAX_REGIONS) fail(`${count} memory regions (1 to ${MAX_REGIONS} allowed)`);
    const end = HEADER_SIZE + count * REGION_SIZE;
    if (bytes.length < end) fail(`the header announces ${count} regions but the stream ends at byte ${bytes.length}`);
    const regions: { size: number }[] = [];
    for (let i = 0; i < count; i++) {
      const d = HEADER_SIZE + i * REGION_SIZE;
      const size = u64(view, d + R_SIZE);
      if (view.getUint32(d + R_FLAGS, true) !== 0 || view.getUint32(d + R_RESERVED, true) !== 0) fail(`region ${i} has flags or reserved bits set`);
      if (size === 0 || size % pageSize !== 0 || size / pageSize > 2 ** 32) fail(`region ${i} of ${size} bytes`);
      regions.push({ size });
    }
    if ((flags & HeaderFlag.Identity) === 0) {
      this.#header = { pageSize, regions };
      return end;
    }
    const { identity, end: identityEnd } = readIdentity(bytes, view, end);
    this.#header = { pageSize, regions, identity };
    return identityEnd;
  }

  #record(type: number, body: Uint8Array, view: DataView): StreamRecord {
    const name = RECORD_NAMES[type];
    const need = (n: number) => {
      if (body.length < n) fail(`a ${name} record of ${body.length} bytes needs at least ${n}`);
    };
    switch (type) {
      case RecordType.Pages: {
        need(8);
        const { region, count, pages } = this.#pageList(view, name);
        const listEnd = padTo(8 + count * 4, 8);
        const size = this.#header!.pageSize;
        if (body.length !== listEnd + count * size) fail(`a ${name} record of ${count} pages must be ${listEnd + count * size} bytes, not ${body.length}`);
        zeros(body, 8 + count * 4, listEnd, `${name} list padding`);
        return { type: "pages", region, pfns: this.#pfns(view, count, pages, region), data: body.subarray(listEnd) };
      }
      case RecordType.ZeroPages: {
        need(8);
        const { region, count, pages } = this.#pageList(view, name);
        if (body.length !== 8 + count * 4) fail(`a ${name} record of ${count} pages must be ${8 + count * 4} bytes, not ${body.length}`);
        return { type: "zero-pages", region, pfns: this.#pfns(view, count, pages, region) };
      }
      case RecordType.DeltaPages: {
        need(8);
        const { region, count, pages } = this.#pageList(view, name);
        const out: { pfn: number; delta: Uint8Array }[] = [];
        let at = 8;
        for (let i = 0; i < count; i++) {
          if (body.length - at < 8) fail(`${name} entry ${i} of ${count} runs past the record`);
          const pfn = view.getUint32(at, true);
          const len = view.getUint32(at + 4, true);
          if (pfn >= pages) throw new TandemError(ErrorCode.StreamFormat, `${name}: page ${pfn} is not in region ${region} (${pages} pages)`);
          const end = at + 8 + padTo(len, 4);
          if (len > this.#header!.pageSize * 2 || end > body.length) fail(`${name} entry ${i}: a ${len}-byte delta runs past the record`);
          zeros(body, at + 8 + len, end, `${name} entry padding`);
          out.push({ pfn, delta: body.subarray(at + 8, at + 8 + len) });
          at = end;
        }
        if (at !== body.length) fail(`${name}: ${body.length - at} bytes after the last of ${count} entries`);
        return { type: "delta-pages", region, pages: out };
      }
      case RecordType.DeviceState:
        need(8);
        if (view.getUint32(4, true) !== 0) fail(`${name}: the reserved field is not zero`);
        return { type: "device-state", device: view.getUint32(0, true), data: body.subarray(8) };
      case RecordType.DeviceStateDelta:
        need(8);
        if (view.getUint32(4, true) !== 0) fail(`${name}: the reserved field is not zero`);
        return { type: "device-state-delta", device: view.getUint32(0, true), delta: body.subarray(8) };
      case RecordType.DiskWrites:
      case RecordType.DiskSyncWrites: {
        need(8);
        const disk = view.getUint32(0, true);
        const count = view.getUint32(4, true);
        const writes: { offset: number; data: Uint8Array }[] = [];
        let at = 8;
        for (let i = 0; i < count; i++) {
          if (body.length - at < 16) fail(`${name} entry ${i} of ${count} runs past the record`);
          const offset = u64(view, at);
          const len = view.getUint32(at + 8, true);
          if (view.getUint32(at + 12, true) !== 0) fail(`${name} entry ${i}: the reserved field is not zero`);
          const end = at + 16 + padTo(len, 8);
          if (end > body.length) fail(`${name} entry ${i}: ${len} bytes run past the record`);
          zeros(body, at + 16 + len, end, `${name} entry padding`);
          writes.push({ offset, data: body.subarray(at + 16, at + 16 + len) });
          at = end;
        }
        if (at !== body.length) fail(`${name}: ${body.length - at} bytes after the last of ${count} writes`);
        return { type: type === RecordType.DiskWrites ? "disk-writes" : "disk-sync-writes", disk, writes };
      }
      case RecordType.DiskSyncBegin: {
        if (body.length !== DSB_SIZE) fail(`a ${name} record must be ${DSB_SIZE} bytes, not ${body.length}`);
        const mode = view.getUint32(DSB_MODE, true);
        if (!(Object.values(DiskSyncMode) as number[]).includes(mode)) fail(`${name}: copy mode ${mode} is not one this tandem knows`);
        return {
          type: "disk-sync-begin",
          disk: view.getUint32(DSB_DISK, true),
          mode: mode as DiskSyncMode,
          diskSize: u64(view, DSB_DISK_SIZE),
          lineage: body.subarray(DSB_LINEAGE, DSB_LINEAGE + LINEAGE_BYTES),
          since: u64(view, DSB_SINCE),
          baseSize: u64(view, DSB_BASE_SIZE),
          baseIdentity: body.subarray(DSB_BASE_IDENTITY, DSB_BASE_IDENTITY + BASE_IDENTITY_BYTES),
        };
      }
      case RecordType.DiskSyncZeroes: {
        need(8);
        const disk = view.getUint32(0, true);
        const count = view.getUint32(4, true);
        if (body.length !== 8 + count * 16) fail(`a ${name} record of ${count} ranges must be ${8 + count * 16} bytes, not ${body.length}`);
        const ranges: { offset: number; length: number }[] = [];
        for (let i = 0; i < count; i++) ranges.push({ offset: u64(view, 8 + i * 16), length: u64(view, 16 + i * 16) });
        return { type: "disk-sync-zeroes", disk, ranges };
      }
      case RecordType.DiskSyncDone:
        if (body.length !== 8) fail(`a ${name} record must be 8 bytes, not ${body.length}`);
        if (view.getUint32(4, true) !== 0) fail(`${name}: the reserved field is not zero`);
        return { type: "disk-sync-done", disk: view.getUint32(0, true) };
      case RecordType.Outputs: {
        need(8);
        const count = view.getUint32(0, true);
        if (view.getUint32(4, true) !== 0) fail(`${name}: the reserved field is not zero`);
        const outputs: { seq: number; channel: string; data: Uint8Array }[] = [];
        let at = 8;
        for (let i = 0; i < count; i++) {
          if (body.length - at < 16) fail(`${name} entry ${i} of ${count} runs past the record`);
          const seq = u64(view, at);
          const nameLength = view.getUint16(at + 8, true);
          if (view.getUint16(at + 10, true) !== 0) fail(`${name} entry ${i}: the reserved field is not zero`);
          const len = view.getUint32(at + 12, true);
          const end = at + 16 + padTo(nameLength + len, 8);
          if (end > body.length) fail(`${name} entry ${i}: ${nameLength + len} bytes run past the record`);
          zeros(body, at + 16 + nameLength + len, end, `${name} entry padding`);
          let channel: string;
          try {
            channel = DECODER.decode(body.subarray(at + 16, at + 16 + nameLength));
          } catch {
            fail(`${name} entry ${i}: the channel name is not UTF-8`);
          }
          outputs.push({ seq, channel, data: body.subarray(at + 16 + nameLength, at + 16 + nameLength + len) });
          at = end;
        }
        if (at !== body.length) fail(`${name}: ${body.length - at} bytes after the last of ${count} outputs`);
        return { type: "outputs", outputs };
      }
      case RecordType.End:
      case RecordType.Handover:
        if (body.length !== 0) fail(`an ${name} record has no body, not ${body.length} bytes`);
        return { type: type === RecordType.End ? "end" : "handover" };
      default: // RecordType.CheckpointEnd: the type was checked against RECORD_NAMES
        if (body.length !== 16 && body.length !== 24) fail(`a ${name} record must be 16 or 24 bytes, not ${body.length}`);
        return body.length === 24
          ? { type: "checkpoint-end", checkpoint: u64(view, 0), generation: u64(view, 8), lastSeq: u64(view, 16) }
          : { type: "checkpoint-end", checkpoint: u64(view, 0), generation: u64(view, 8) };
    }
  }

  #pageList(view: DataView, name: string): { region: number; count: number; pages: number } {
    const region = view.getUint32(0, true);
    const count = view.getUint32(4, true);
    const r = this.#header!.regions[region];
    if (!r) throw new TandemError(ErrorCode.StreamFormat, `${name}: region ${region} is not in the stream header (${this.#header!.regions.length} regions)`);
    const pages = r.size / this.#header!.pageSize;
    if (count > pages) fail(`${name}: ${count} pages listed for a region of ${pages}`);
    return { region, count, pages };
  }

  #pfns(view: DataView, count: number, pages: number, region: number): Uint32Array {
    const pfns = new Uint32Array(count);
    for (let i = 0; i < count; i++) {
      const pfn = view.getUint32(8 + i * 4, true);
      if (pfn >= pages) throw new TandemError(ErrorCode.StreamFormat, `page ${pfn} is not in region ${region} (${pages} pages)`);
      pfns[i] = pfn;
    }
    return pfns;
  }
}

/** The identity section at `start` (docs/checkpoint-stream.md), every length checked against the bytes. */
function readIdentity(bytes: Uint8Array, view: DataView, start: number): { identity: StreamIdentityField[]; end: number } {
  if (bytes.length - start < IDENTITY_HEAD_SIZE) fail(`the header announces an identity section but the stream ends at byte ${bytes.length}`);
  const length = view.getUint32(start + I_LENGTH, true);
  const count = view.getUint32(start + I_COUNT, true);
  if (count > MAX_IDENTITY_FIELDS) fail(`an identity of ${count} fields (at most ${MAX_IDENTITY_FIELDS})`);
  if (length < IDENTITY_HEAD_SIZE || length % 8 !== 0 || length > bytes.length - start) fail(`an identity section of ${length} bytes at byte ${start} (the stream ends at ${bytes.length})`);
  const end = start + length;
  const identity: StreamIdentityField[] = [];
  const names = new Set<string>();
  let at = start + IDENTITY_HEAD_SIZE;
  for (let i = 0; i < count; i++) {
    if (end - at < FIELD_HEAD_SIZE) fail(`identity field ${i} of ${count} runs past its section`);
    const kind = view.getUint8(at + F_KIND);
    const nameLength = view.getUint16(at + F_NAME_LENGTH, true);
    const valueLength = view.getUint32(at + F_VALUE_LENGTH, true);
    if (view.getUint8(at + F_RESERVED) !== 0) fail(`identity field ${i}: the reserved byte is not zero`);
    if (kind !== 1 && kind !== 2) fail(`identity field ${i} has kind ${kind} (1 value, 2 digest)`);
    if (nameLength === 0 || nameLength > MAX_FIELD_NAME_BYTES) fail(`identity field ${i} has a name of ${nameLength} bytes (1 to ${MAX_FIELD_NAME_BYTES})`);
    if (valueLength > MAX_FIELD_VALUE_BYTES) fail(`identity field ${i} has a value of ${valueLength} bytes (at most ${MAX_FIELD_VALUE_BYTES})`);
    const text = at + FIELD_HEAD_SIZE;
    const next = text + padTo(nameLength + valueLength, 8);
    if (next > end) fail(`identity field ${i} runs past its section`);
    zeros(bytes, text + nameLength + valueLength, next, `identity field ${i} padding`);
    let name: string;
    let value: string;
    try {
      name = DECODER.decode(bytes.subarray(text, text + nameLength));
      value = DECODER.decode(bytes.subarray(text + nameLength, text + nameLength + valueLength));
    } catch {
      fail(`identity field ${i} is not UTF-8`);
    }
    if (names.has(name)) fail(`identity field "${name}" appears twice`);
    names.add(name);
    identity.push({ name, kind: kind === 1 ? "value" : "digest", value });
    at = next;
  }
  if (at !== end) fail(`${end - at} bytes after the last of ${count} identity fields`);
  return { identity, end };
}

function fail(message: string): never {
  throw new TandemError(ErrorCode.StreamFormat, message);
}

function zeros(bytes: Uint8Array, from: number, to: number, what: string): void {
  for (let i = from; i < to; i++) if (bytes[i] !== 0) fail(`${what} is not zero`);
}

/** A u64 field as a number; values past 2^53 are refused (no offset or counter gets there). */
function u64(view: DataView, at: number): number {
  const high = view.getUint32(at + 4, true);
  if (high >= 2 ** 21) fail(`a 64-bit field of ${high} * 2^32 is past 2^53`);
  return high * 2 ** 32 + view.getUint32(at, true);
}
