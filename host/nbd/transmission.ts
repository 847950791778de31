/**
 * The transmission phase (proto.md "Transmission"): requests in, replies out, against one Disk.
 * Disks are synchronous (host/disk/disk.ts), so each request is complete when its reply is
 * queued; requests the client pipelines are answered in order as they arrive, and the connection
 * bounds how many replies may wait unsent. A WRITE is applied only once its whole payload has
 * arrived, so a client vanishing mid-payload leaves the disk untouched.
 */

import { Buffer } from "node:buffer";
import type { Disk } from "../disk/disk.ts";
import { ErrorCode, TandemError } from "../errors.ts";
import type { Negotiated, Want } from "./handshake.ts";
import {
  CHUNK_HEADER_BYTES,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOTSUP,
  NBD_EPERM,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REQUEST_MAGIC,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  REQUEST_BYTES,
  REQUEST_COOKIE,
  REQUEST_FLAGS,
  REQUEST_LENGTH,
  REQUEST_MAGIC,
  REQUEST_OFFSET,
  REQUEST_TYPE,
  SIMPLE_REPLY_BYTES,
  writeChunkHeader,
  writeSimpleReply,
} from "./protocol.ts";

/** The largest READ or WRITE payload (and the bound on NO_HOLE zeroing buffers): 32 MiB, as qemu-nbd. */
export const MAX_PAYLOAD = 32 * 1024 * 1024;
/** Descriptors in one block status reply at most; the client asks again for the rest. */
export const MAX_STATUS_DESCRIPTORS = 64 * 1024;
/** NO_HOLE zeroing writes zeros in pieces of this size. */
const ZERO_PIECE = 1024 * 1024;

/** One decoded request header. */
interface Request {
  flags: number;
  type: number;
  cookie: bigint;
  offset: number;
  length: number;
}

type State =
  | { kind: "request" }
  | { kind: "payload"; request: Request }
  | { kind: "skip"; remaining: number }
  | { kind: "closed"; reason: string };

/** What a connection learns of each request, for logs and tests. */
export interface RequestEvents {
  /** A request failed with an NBD error number. */
  error?(command: number, error: number, message: string): void;
  /** A request was answered (or, for NBD_CMD_DISC, taken), `ms` after it was whole, `failed` if with an error. */
  done?(command: number, ms: number, failed: boolean): void;
}

/** The server's side of transmission for one connection. */
export class Transmission {
  #state: State = { kind: "request" };
  readonly #disk: Disk;
  readonly #negotiated: Negotiated;
  readonly #send: (bytes: Uint8Array) => void;
  readonly #events: RequestEvents;
  #zeroPiece: Uint8Array | null = null;
  /** Whether the request being handled was answered with an error. */
  #failed = false;

  constructor(disk: Disk, negotiated: Negotiated, send: (bytes: Uint8Array) => void, events: RequestEvents = {}) {
    this.#disk = disk;
    this.#negotiated = negotiated;
    this.#send = send;
    this.#events = events;
  }

  /** What transmission waits for. */
  wants(): Want {
    const s = this.#state;
    switch (s.kind) {
      case "request":
        return { kind: "read", bytes: REQUEST_BYTES };
      case "payload":
        return { kind: "read", bytes: s.request.length };
      case "skip":
        return { kind: "skip", bytes: s.remaining };
      case "closed":
        return { kind: "close", reason: s.reason };
    }
  }

  /** Feeds exactly the bytes the last `wants()` asked to read. */
  receive(bytes: Uint8Array): void {
    const s = this.#state;
    if (s.kind === "payload") {
      this.#state = { kind: "request" };
      this.#timed(s.request, () => this.#write(s.request, bytes));
      return;
    }
    if (s.kind !== "request") return;
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    if (view.getUint32(REQUEST_MAGIC) !== NBD_REQUEST_MAGIC) {
      // Without the magic the stream is out of step: nothing after it can be trusted.
      this.#state = { kind: "closed", reason: `a request with bad magic 0x${view.getUint32(REQUEST_MAGIC).toString(16)}` };
      return;
    }
    const request: Request = {
      flags: view.getUint16(REQUEST_FLAGS),
      type: view.getUint16(REQUEST_TYPE),
      cookie: view.getBigUint64(REQUEST_COOKIE),
      // Offsets past 2^53 are past any disk: keep them out of range rather than rounding them.
      offset: Number(view.getBigUint64(REQUEST_OFFSET)),
      length: view.getUint32(REQUEST_LENGTH),
    };
    this.#timed(request, () => this.#dispatch(request));
  }

  /** Runs `handle` and reports the request done, unless it now waits for its payload. Disks are synchronous, so it is answered on return. */
  #timed(r: Request, handle: () => void): void {
    const started = performance.now();
    this.#failed = false;
    handle();
    const s = this.#state;
    if (s.kind === "payload" && s.request === r) return;
    this.#events.done?.(r.type, performance.now() - started, this.#failed);
  }

  /** Reports that `count` bytes of a refused write's payload were discarded. */
  skipped(count: number): void {
    const s = this.#state;
    if (s.kind !== "skip") return;
    this.#state = s.remaining - count > 0 ? { kind: "skip", remaining: s.remaining - count } : { kind: "request" };
  }

  #dispatch(r: Request): void {
    switch (r.type) {
      case NBD_CMD_READ:
        return this.#read(r);
      case NBD_CMD_WRITE: {
        const refusal = this.#refuseWrite(r, true);
        if (refusal !== null) {
          // Answer now and discard the payload as it arrives, so the stream stays in step.
          this.#error(r, refusal.error, refusal.message);
          if (r.length > 0) this.#state = { kind: "skip", remaining: r.length };
          return;
        }
        if (r.length === 0) return this.#write(r, new Uint8Array(0));
        this.#state = { kind: "payload", request: r };
        return;
      }
      case NBD_CMD_DISC:
        this.#state = { kind: "closed", reason: "the client sent NBD_CMD_DISC" };
        return;
      case NBD_CMD_FLUSH:
        return this.#apply(r, () => this.#disk.flush());
      case NBD_CMD_TRIM:
        return this.#modify(r, () => this.#disk.discard(r.offset, r.length));
      case NBD_CMD_WRITE_ZEROES:
        return this.#modify(r, () => ((r.flags & NBD_CMD_FLAG_NO_HOLE) !== 0 ? this.#writeZeroBytes(r.offset, r.length) : this.#disk.writeZeroes(r.offset, r.length)));
      case NBD_CMD_BLOCK_STATUS:
        return this.#blockStatus(r);
      default:
        return this.#error(r, NBD_ENOTSUP, `command ${r.type} is not supported`);
    }
  }

  #read(r: Request): void {
    if (r.length > MAX_PAYLOAD) return this.#error(r, NBD_EINVAL, `read of ${r.length} bytes exceeds the ${MAX_PAYLOAD}-byte limit`);
    if (!this.#inRange(r)) return this.#rangeError(r);
    const structured = this.#negotiated.structuredReplies;
    if (structured && r.length === 0) return this.#chunk(r, NBD_REPLY_TYPE_NONE, new Uint8Array(0));
    const headerBytes = structured ? CHUNK_HEADER_BYTES + 8 : SIMPLE_REPLY_BYTES;
    const reply = Buffer.allocUnsafe(headerBytes + r.length);
    try {
      this.#disk.readInto(r.offset, reply.subarray(headerBytes));
    } catch (error) {
      return this.#failure(r, error);
    }
    const view = new DataView(reply.buffer, reply.byteOffset, headerBytes);
    if (structured) {
      writeChunkHeader(view, 0, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, r.cookie, 8 + r.length);
      view.setBigUint64(CHUNK_HEADER_BYTES, BigInt(r.offset));
    } else {
      writeSimpleReply(view, 0, 0, r.cookie);
    }
    this.#send(reply);
  }

  #write(r: Request, data: Uint8Array): void {
    this.#modify(r, () => this.#disk.write(r.offset, data));
  }

  /** Why a write-like request is refused before touching the disk, or null. */
  #refuseWrite(r: Request, hasPayload: boolean): { error: number; message: string } | null {
    if (hasPayload && r.length > MAX_PAYLOAD) return { error: NBD_EINVAL, message: `write of ${r.length} bytes exceeds the ${MAX_PAYLOAD}-byte limit` };
    if (this.#disk.readOnly) return { error: NBD_EPERM, message: "the export is read-only" };
    if (!this.#inRange(r)) return { error: NBD_EINVAL, message: `${r.length} bytes at ${r.offset} go past the ${this.#disk.size}-byte export` };
    return null;
  }

  /** A request that changes the disk: refused if read-only or out of range; FUA flushes before the reply. */
  #modify(r: Request, change: () => void): void {
    const refusal = this.#refuseWrite(r, false);
    if (refusal !== null) return this.#error(r, refusal.error, refusal.message);
    this.#apply(r, () => {
      change();
      if ((r.flags & NBD_CMD_FLAG_FUA) !== 0) this.#disk.flush();
    });
  }

  #apply(r: Request, action: () => void): void {
    try {
      action();
    } catch (error) {
      return this.#failure(r, error);
    }
    this.#success(r);
  }

  #writeZeroBytes(offset: number, length: number): void {
    this.#zeroPiece ??= new Uint8Array(ZERO_PIECE);
    for (let done = 0; done < length; done += ZERO_PIECE) {
      const n = Math.min(ZERO_PIECE, length - done);
      this.#disk.write(offset + done, this.#zeroPiece.subarray(0, n));
    }
  }

  #blockStatus(r: Request): void {
    const id = this.#negotiated.baseAllocationId;
    if (!this.#negotiated.structuredReplies || id === 0) return this.#error(r, NBD_EINVAL, "NBD_CMD_BLOCK_STATUS needs base:allocation selected with NBD_OPT_SET_META_CONTEXT");
    if (r.length === 0 || !this.#inRange(r)) return this.#rangeError(r);
    let extents;
    try {
      extents = this.#disk.map(r.offset, r.length);
    } catch (error) {
      return this.#failure(r, error);
    }
    const limit = (r.flags & NBD_CMD_FLAG_REQ_ONE) !== 0 ? 1 : MAX_STATUS_DESCRIPTORS;
    const lengths: number[] = [];
    const states: number[] = [];
    for (const e of extents) {
      // qemu-nbd's mapping: a hole is a range not stored as data; zero is "reads as zeros".
      const state = (e.data ? 0 : NBD_STATE_HOLE) | (e.zero ? NBD_STATE_ZERO : 0);
      const last = states.length - 1;
      if (last >= 0 && states[last] === state) lengths[last] += e.length;
      else if (states.length < limit) {
        lengths.push(e.length);
        states.push(state);
      } else break;
    }
    const payload = Buffer.allocUnsafe(4 + 8 * states.length);
    const view = new DataView(payload.buffer, payload.byteOffset, payload.length);
    view.setUint32(0, id);
    for (let i = 0; i < states.length; i++) {
      view.setUint32(4 + 8 * i, lengths[i]);
      view.setUint32(8 + 8 * i, states[i]);
    }
    this.#chunk(r, NBD_REPLY_TYPE_BLOCK_STATUS, payload);
  }

  #inRange(r: Request): boolean {
    return r.offset + r.length <= this.#disk.size;
  }

  #rangeError(r: Request): void {
    this.#error(r, NBD_EINVAL, `${r.length} bytes at ${r.offset} go past the ${this.#disk.size}-byte export`);
  }

  #failure(r: Request, error: unknown): void {
    const message = error instanceof Error ? error.message : String(error);
    this.#error(r, errnoOf(error), message);
  }

  #success(r: Request): void {
    if (this.#negotiated.structuredReplies) return this.#chunk(r, NBD_REPLY_TYPE_NONE, new Uint8Array(0));
    const reply = Buffer.allocUnsafe(SIMPLE_REPLY_BYTES);
    writeSimpleReply(new DataView(reply.buffer, reply.byteOffset, reply.length), 0, 0, r.cookie);
    this.#send(reply);
  }

  #error(r: Request, error: number, message: string): void {
    this.#failed = true;
    this.#events.error?.(r.type, error, message);
    if (!this.#negotiated.structuredReplies) {
      const reply = Buffer.allocUnsafe(SIMPLE_REPLY_BYTES);
      writeSimpleReply(new DataView(reply.buffer, reply.byteOffset, reply.length), 0, error, r.cookie);
      this.#send(reply);
      return;
    }
    const text = new TextEncoder().encode(message).subarray(0, 4096);
    const payload = Buffer.allocUnsafe(6 + text.length);
    const view = new DataView(payload.buffer, payload.byteOffset, payload.length);
    view.setUint32(0, error);
    view.setUint16(4, text.length);
    payload.set(text, 6);
    this.#chunk(r, NBD_REPLY_TYPE_ERROR, payload);
  }

  /** One structured reply chunk that ends the reply. */
  #chunk(r: Request, type: number, payload: Uint8Array): void {
    const reply = Buffer.allocUnsafe(CHUNK_HEADER_BYTES + payload.length);
    writeChunkHeader(new DataView(reply.buffer, reply.byteOffset, CHUNK_HEADER_BYTES), 0, NBD_REPLY_FLAG_DONE, type, r.cookie, payload.length);
    reply.set(payload, CHUNK_HEADER_BYTES);
    this.#send(reply);
  }
}

/** The NBD error number for a failure of the disk layer. */
function errnoOf(error: unknown): number {
  if (!(error instanceof TandemError)) return NBD_EIO;
  switch (error.code) {
    case ErrorCode.DiskReadOnly:
      return NBD_EPERM;
    case ErrorCode.OutOfRange:
    case ErrorCode.BadArgument:
      return NBD_EINVAL;
    default:
      return NBD_EIO;
  }
}
