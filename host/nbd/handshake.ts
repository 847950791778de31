/**
 * The fixed newstyle handshake and option haggling (proto.md "Fixed newstyle negotiation",
 * "Option haggling") as an explicit state machine: the connection feeds it exactly the bytes its
 * state asks for, and it answers through `send`. It ends in transmission (after NBD_OPT_GO or
 * NBD_OPT_EXPORT_NAME) or with the connection to close.
 */

import { Buffer } from "node:buffer";
import {
  BASE_ALLOCATION,
  CLIENT_FLAGS_BYTES,
  EXPORT_NAME_REPLY_ZEROES,
  GREETING_BYTES,
  IHAVEOPT,
  MAX_STRING_BYTES,
  NBDMAGIC,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  OPTION_HEADER_BYTES,
  OPTION_HEADER_LENGTH,
  OPTION_HEADER_OPTION,
  OPTION_REPLY_HEADER_BYTES,
  writeOptionReplyHeader,
} from "./protocol.ts";

/** What the handshake offers: one export. */
export interface ExportDescription {
  /** The export's name; the empty name ("default export") also selects it. */
  name: string;
  /** Shown by NBD_INFO_DESCRIPTION and `nbdinfo`. */
  description: string;
  /** Bytes. */
  size: number;
  readOnly: boolean;
  /** The largest READ or WRITE payload accepted, advertised as the maximum block size. */
  maxPayload: number;
}

/** What was agreed, for the transmission phase. */
export interface Negotiated {
  structuredReplies: boolean;
  /** The context id given to base:allocation, or 0 if the client did not select it. */
  baseAllocationId: number;
  transmissionFlags: number;
}

/** What a protocol phase waits for next. */
export type Want =
  | { kind: "read"; bytes: number }
  | { kind: "skip"; bytes: number }
  | { kind: "transmission"; negotiated: Negotiated }
  | { kind: "close"; reason: string };

/** Option data larger than this is skipped and refused with NBD_REP_ERR_TOO_BIG. */
export const MAX_OPTION_DATA = 64 * 1024;
/** The context id given to base:allocation (any non-zero id will do; proto.md "NBD_REP_META_CONTEXT"). */
export const BASE_ALLOCATION_ID = 1;
/** Preferred block size advertised in NBD_INFO_BLOCK_SIZE: the page and qcow2-cluster scale. */
const PREFERRED_BLOCK = 4096;

type State =
  | { kind: "client-flags" }
  | { kind: "option-header" }
  | { kind: "option-data"; option: number; length: number }
  | { kind: "option-skip"; option: number; remaining: number }
  | { kind: "transmission" }
  | { kind: "closed"; reason: string };

/** The server's side of the handshake for one connection. */
export class Handshake {
  #state: State = { kind: "client-flags" };
  #noZeroes = false;
  #structured = false;
  #baseAllocationId = 0;
  readonly #export: ExportDescription;
  readonly #send: (bytes: Uint8Array) => void;

  /** Sends the greeting at once through `send`. */
  constructor(exportDescription: ExportDescription, send: (bytes: Uint8Array) => void) {
    this.#export = exportDescription;
    this.#send = send;
    const greeting = Buffer.alloc(GREETING_BYTES);
    const view = new DataView(greeting.buffer, greeting.byteOffset, greeting.length);
    view.setBigUint64(0, NBDMAGIC);
    view.setBigUint64(8, IHAVEOPT);
    view.setUint16(16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    send(greeting);
  }

  /** What the handshake waits for. */
  wants(): Want {
    const s = this.#state;
    switch (s.kind) {
      case "client-flags":
        return { kind: "read", bytes: CLIENT_FLAGS_BYTES };
      case "option-header":
        return { kind: "read", bytes: OPTION_HEADER_BYTES };
      case "option-data":
        return { kind: "read", bytes: s.length };
      case "option-skip":
        return { kind: "skip", bytes: s.remaining };
      case "transmission":
        return { kind: "transmission", negotiated: this.#negotiated() };
      case "closed":
        return { kind: "close", reason: s.reason };
    }
  }

  /** Feeds exactly the bytes the last `wants()` asked to read. */
  receive(bytes: Uint8Array): void {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    const s = this.#state;
    if (s.kind === "client-flags") {
      const flags = view.getUint32(0);
      if ((flags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) !== 0) {
        // proto.md: a server that sees client flags it does not know MUST close the connection.
        this.#state = { kind: "closed", reason: `unknown client flags 0x${flags.toString(16)}` };
        return;
      }
      this.#noZeroes = (flags & NBD_FLAG_C_NO_ZEROES) !== 0;
      this.#state = { kind: "option-header" };
    } else if (s.kind === "option-header") {
      if (view.getBigUint64(0) !== IHAVEOPT) {
        this.#state = { kind: "closed", reason: "an option without the IHAVEOPT magic" };
        return;
      }
      const option = view.getUint32(OPTION_HEADER_OPTION);
      const length = view.getUint32(OPTION_HEADER_LENGTH);
      if (length > MAX_OPTION_DATA) this.#state = { kind: "option-skip", option, remaining: length };
      else if (length === 0) this.#option(option, new Uint8Array(0));
      else this.#state = { kind: "option-data", option, length };
    } else if (s.kind === "option-data") {
      this.#state = { kind: "option-header" };
      this.#option(s.option, bytes);
    }
  }

  /** Reports that `count` bytes of a skipped option's data were discarded. */
  skipped(count: number): void {
    const s = this.#state;
    if (s.kind !== "option-skip") return;
    const remaining = s.remaining - count;
    if (remaining > 0) {
      this.#state = { ...s, remaining };
      return;
    }
    this.#state = { kind: "option-header" };
    this.#reply(s.option, NBD_REP_ERR_TOO_BIG, text(`option data over ${MAX_OPTION_DATA} bytes`));
  }

  #negotiated(): Negotiated {
    const e = this.#export;
    let flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_CAN_MULTI_CONN;
    flags |= e.readOnly ? NBD_FLAG_READ_ONLY : NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES;
    // A read's reply is always one chunk, so "don't fragment" costs nothing (needs structured replies).
    if (this.#structured) flags |= NBD_FLAG_SEND_DF;
    return { structuredReplies: this.#structured, baseAllocationId: this.#baseAllocationId, transmissionFlags: flags };
  }

  #option(option: number, data: Uint8Array): void {
    const view = new DataView(data.buffer, data.byteOffset, data.length);
    switch (option) {
      case NBD_OPT_EXPORT_NAME:
        return this.#exportName(data);
      case NBD_OPT_ABORT:
        this.#reply(option, NBD_REP_ACK);
        this.#state = { kind: "closed", reason: "the client sent NBD_OPT_ABORT" };
        return;
      case NBD_OPT_LIST:
        if (data.length !== 0) return this.#reply(option, NBD_REP_ERR_INVALID, text("NBD_OPT_LIST takes no data"));
        this.#reply(option, NBD_REP_SERVER, concat(u32(byteLength(this.#export.name)), text(this.#export.name)));
        return this.#reply(option, NBD_REP_ACK);
      case NBD_OPT_INFO:
      case NBD_OPT_GO:
        return this.#infoOrGo(option, view);
      case NBD_OPT_STRUCTURED_REPLY:
        if (data.length !== 0) return this.#reply(option, NBD_REP_ERR_INVALID, text("NBD_OPT_STRUCTURED_REPLY takes no data"));
        this.#structured = true;
        return this.#reply(option, NBD_REP_ACK);
      case NBD_OPT_LIST_META_CONTEXT:
      case NBD_OPT_SET_META_CONTEXT:
        return this.#metaContext(option, view);
      default:
        return this.#reply(option, NBD_REP_ERR_UNSUP, text(`option ${option} is not supported`));
    }
  }

  #exportName(data: Uint8Array): void {
    const name = decodeString(data);
    if (name === null || !this.#selects(name)) {
      // proto.md: NBD_OPT_EXPORT_NAME has no error reply; the server closes the connection.
      this.#state = { kind: "closed", reason: `NBD_OPT_EXPORT_NAME for unknown export '${name ?? "?"}'` };
      return;
    }
    const negotiated = this.#negotiated();
    const reply = Buffer.alloc(10 + (this.#noZeroes ? 0 : EXPORT_NAME_REPLY_ZEROES));
    const view = new DataView(reply.buffer, reply.byteOffset, reply.length);
    view.setBigUint64(0, BigInt(this.#export.size));
    view.setUint16(8, negotiated.transmissionFlags);
    this.#send(reply);
    this.#state = { kind: "transmission" };
  }

  /** NBD_OPT_INFO / NBD_OPT_GO data: name length (32), name, request count (16), requests (16 each). */
  #infoOrGo(option: number, view: DataView): void {
    const name = readString(view, 0);
    if (name === null || view.byteLength < 4 + name.bytes + 2) return this.#reply(option, NBD_REP_ERR_INVALID, text("malformed NBD_OPT_INFO/GO data"));
    const count = view.getUint16(4 + name.bytes);
    const requestsAt = 4 + name.bytes + 2;
    if (view.byteLength !== requestsAt + 2 * count) return this.#reply(option, NBD_REP_ERR_INVALID, text("NBD_OPT_INFO/GO request count does not match its length"));
    if (!this.#selects(name.value)) return this.#reply(option, NBD_REP_ERR_UNKNOWN, text(`no export named '${name.value}'`));
    const requested = new Set<number>();
    for (let i = 0; i < count; i++) requested.add(view.getUint16(requestsAt + 2 * i));
    const e = this.#export;
    const info = Buffer.alloc(12);
    const infoView = new DataView(info.buffer, info.byteOffset, info.length);
    infoView.setUint16(0, NBD_INFO_EXPORT);
    infoView.setBigUint64(2, BigInt(e.size));
    infoView.setUint16(10, this.#negotiated().transmissionFlags);
    this.#reply(option, NBD_REP_INFO, info);
    const sizes = Buffer.alloc(14);
    const sizesView = new DataView(sizes.buffer, sizes.byteOffset, sizes.length);
    sizesView.setUint16(0, NBD_INFO_BLOCK_SIZE);
    sizesView.setUint32(2, 1);
    sizesView.setUint32(6, PREFERRED_BLOCK);
    sizesView.setUint32(10, e.maxPayload);
    this.#reply(option, NBD_REP_INFO, sizes);
    if (requested.has(NBD_INFO_NAME)) this.#reply(option, NBD_REP_INFO, concat(u16(NBD_INFO_NAME), text(e.name)));
    if (requested.has(NBD_INFO_DESCRIPTION) && e.description !== "") this.#reply(option, NBD_REP_INFO, concat(u16(NBD_INFO_DESCRIPTION), text(e.description)));
    this.#reply(option, NBD_REP_ACK);
    if (option === NBD_OPT_GO) this.#state = { kind: "transmission" };
  }

  /** LIST/SET_META_CONTEXT data: name length (32), name, query count (32), queries (length 32, string). */
  #metaContext(option: number, view: DataView): void {
    if (option === NBD_OPT_SET_META_CONTEXT && !this.#structured) {
      return this.#reply(option, NBD_REP_ERR_INVALID, text("NBD_OPT_SET_META_CONTEXT needs NBD_OPT_STRUCTURED_REPLY first"));
    }
    const name = readString(view, 0);
    if (name === null || view.byteLength < 4 + name.bytes + 4) return this.#reply(option, NBD_REP_ERR_INVALID, text("malformed meta context data"));
    const count = view.getUint32(4 + name.bytes);
    const queries: string[] = [];
    let at = 4 + name.bytes + 4;
    for (let i = 0; i < count; i++) {
      const query = readString(view, at);
      if (query === null) return this.#reply(option, NBD_REP_ERR_INVALID, text("malformed meta context query"));
      queries.push(query.value);
      at += 4 + query.bytes;
    }
    if (at !== view.byteLength) return this.#reply(option, NBD_REP_ERR_INVALID, text("meta context data longer than its queries"));
    if (!this.#selects(name.value)) return this.#reply(option, NBD_REP_ERR_UNKNOWN, text(`no export named '${name.value}'`));
    const listing = option === NBD_OPT_LIST_META_CONTEXT;
    // LIST with no queries lists every context; "base:" names the whole namespace (proto.md "Metadata querying").
    const matches = queries.some((q) => q === BASE_ALLOCATION || (listing && q === "base:")) || (listing && count === 0);
    if (!listing) this.#baseAllocationId = matches ? BASE_ALLOCATION_ID : 0;
    if (matches) this.#reply(option, NBD_REP_META_CONTEXT, concat(u32(listing ? 0 : BASE_ALLOCATION_ID), text(BASE_ALLOCATION)));
    this.#reply(option, NBD_REP_ACK);
  }

  #selects(name: string): boolean {
    return name === this.#export.name || name === "";
  }

  #reply(option: number, type: number, data: Uint8Array = new Uint8Array(0)): void {
    const message = Buffer.allocUnsafe(OPTION_REPLY_HEADER_BYTES + data.length);
    writeOptionReplyHeader(new DataView(message.buffer, message.byteOffset, message.length), 0, option, type, data.length);
    message.set(data, OPTION_REPLY_HEADER_BYTES);
    this.#send(message);
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

function text(value: string): Uint8Array {
  return encoder.encode(value);
}
function byteLength(value: string): number {
  return encoder.encode(value).length;
}
function u16(value: number): Uint8Array {
  const out = new Uint8Array(2);
  new DataView(out.buffer).setUint16(0, value);
  return out;
}
function u32(value: number): Uint8Array {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, value);
  return out;
}
function concat(...parts: Uint8Array[]): Uint8Array {
  return Buffer.concat(parts);
}

/** A whole option's data as a string, or null if it is too long or not UTF-8. */
function decodeString(bytes: Uint8Array): string | null {
  if (bytes.length > MAX_STRING_BYTES) return null;
  try {
    return decoder.decode(bytes);
  } catch {
    return null;
  }
}

/** A 32-bit-length-prefixed string at `at`, checked against the data's end and the string limit. */
function readString(view: DataView, at: number): { value: string; bytes: number } | null {
  if (at + 4 > view.byteLength) return null;
  const length = view.getUint32(at);
  if (length > MAX_STRING_BYTES || at + 4 + length > view.byteLength) return null;
  const value = decodeString(new Uint8Array(view.buffer, view.byteOffset + at + 4, length));
  return value === null ? null : { value, bytes: length };
}
