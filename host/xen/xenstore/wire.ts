/**
 * The xs_wire message layout (xen/include/public/io/xs_wire.h, Xen 4.17; docs/misc/xenstore.txt):
 * a 16-byte header `struct xsd_sockmsg` followed by `len` bytes of payload, and an incremental
 * decoder that checks every length before it trusts it.
 *
 * Xen writes the header in the host's byte order. Every Xen host tandem talks to (x86, Arm) is
 * little-endian, so tandem reads and writes it little-endian whatever machine it runs on.
 *
 * Payload strings are bytes, not text: paths are ASCII, tokens and values may hold any byte but
 * NUL (values even NUL). They are mapped byte for byte to JavaScript strings (latin1) so that a
 * token comes back exactly as it was sent.
 */

import { ErrorCode, TandemError } from "../../errors.ts";

/** Message types: `enum xsd_sockmsg_type` in xs_wire.h. 20 (XS_RESTRICT) was removed. */
export const XsType = {
  Control: 0,
  Directory: 1,
  Read: 2,
  GetPerms: 3,
  Watch: 4,
  Unwatch: 5,
  TransactionStart: 6,
  TransactionEnd: 7,
  Introduce: 8,
  Release: 9,
  GetDomainPath: 10,
  Write: 11,
  Mkdir: 12,
  Rm: 13,
  SetPerms: 14,
  /** Daemon to client only: a watch fired. */
  WatchEvent: 15,
  /** Daemon to client only: the request failed; the payload is an errno name. */
  Error: 16,
  IsDomainIntroduced: 17,
  Resume: 18,
  SetTarget: 19,
  ResetWatches: 21,
  DirectoryPart: 22,
} as const;

/** `XS_INVALID`: guaranteed never to be a valid type. */
export const XS_INVALID = 0xffff;

// struct xsd_sockmsg (xs_wire.h): four u32s.
/** u32 type, an {@link XsType}. */
export const HEADER_TYPE = 0;
/** u32 req_id, echoed in the daemon's reply. */
export const HEADER_REQ_ID = 4;
/** u32 tx_id, 0 outside a transaction. */
export const HEADER_TX_ID = 8;
/** u32 len, the payload length that follows. */
export const HEADER_LEN = 12;
/** sizeof(struct xsd_sockmsg). */
export const HEADER_SIZE = 16;

/** XENSTORE_PAYLOAD_MAX: the largest payload in either direction; more gets the connection killed. */
export const XENSTORE_PAYLOAD_MAX = 4096;
/** XENSTORE_ABS_PATH_MAX: the longest absolute path. */
export const XENSTORE_ABS_PATH_MAX = 3072;
/** XENSTORE_REL_PATH_MAX: the longest relative path. */
export const XENSTORE_REL_PATH_MAX = 2048;

/** A message's header fields. */
export interface XsHeader {
  type: number;
  reqId: number;
  txId: number;
  len: number;
}

/** A whole message: header fields and payload. */
export interface XsMessage {
  type: number;
  reqId: number;
  txId: number;
  payload: Uint8Array;
}

/** What the decoder found next: a message, or a header whose length is over the limit. */
export type XsDecoded = { message: XsMessage } | { oversized: XsHeader };

/** Header and payload as one buffer, ready to write. */
export function encodeMessage(message: XsMessage): Uint8Array {
  const { payload } = message;
  if (payload.length > XENSTORE_PAYLOAD_MAX) {
    throw new TandemError(ErrorCode.XsProtocol, `a ${payload.length}-byte xenstore payload is over XENSTORE_PAYLOAD_MAX (${XENSTORE_PAYLOAD_MAX})`);
  }
  const bytes = new Uint8Array(HEADER_SIZE + payload.length);
  const view = new DataView(bytes.buffer);
  view.setUint32(HEADER_TYPE, message.type >>> 0, true);
  view.setUint32(HEADER_REQ_ID, message.reqId >>> 0, true);
  view.setUint32(HEADER_TX_ID, message.txId >>> 0, true);
  view.setUint32(HEADER_LEN, payload.length, true);
  bytes.set(payload, HEADER_SIZE);
  return bytes;
}

/**
 * Cuts a byte stream into messages, however it arrives. It holds at most one partial message
 * (header plus XENSTORE_PAYLOAD_MAX) beyond the chunk being decoded. After an oversized header the
 * stream cannot be resynchronised: the decoder stops and yields nothing more.
 */
export class XsDecoder {
  #pending: Uint8Array = new Uint8Array(0);
  #broken = false;

  /** Bytes received and not yet part of a decoded message. */
  get pendingBytes(): number {
    return this.#pending.length;
  }

  /** Adds received bytes; call {@link next} until it returns undefined. */
  push(chunk: Uint8Array): void {
    if (this.#broken || chunk.length === 0) return;
    if (this.#pending.length === 0) {
      this.#pending = chunk;
      return;
    }
    const joined = new Uint8Array(this.#pending.length + chunk.length);
    joined.set(this.#pending, 0);
    joined.set(chunk, this.#pending.length);
    this.#pending = joined;
  }

  /** The next whole message, an oversized header (then nothing more), or undefined if more bytes are needed. */
  next(): XsDecoded | undefined {
    if (this.#broken || this.#pending.length < HEADER_SIZE) return undefined;
    const pending = this.#pending;
    const view = new DataView(pending.buffer, pending.byteOffset, HEADER_SIZE);
    const header: XsHeader = {
      type: view.getUint32(HEADER_TYPE, true),
      reqId: view.getUint32(HEADER_REQ_ID, true),
      txId: view.getUint32(HEADER_TX_ID, true),
      len: view.getUint32(HEADER_LEN, true),
    };
    if (header.len > XENSTORE_PAYLOAD_MAX) {
      this.#broken = true;
      this.#pending = new Uint8Array(0);
      return { oversized: header };
    }
    const end = HEADER_SIZE + header.len;
    if (pending.length < end) return undefined;
    // A copy, so the payload outlives the chunk it came in and the chunk is not pinned.
    const payload = pending.slice(HEADER_SIZE, end);
    this.#pending = pending.subarray(end);
    if (this.#pending.length === 0) this.#pending = new Uint8Array(0);
    return { message: { type: header.type, reqId: header.reqId, txId: header.txId, payload } };
  }
}

/** Bytes as a string of the same char codes (latin1), so any byte survives a round trip. */
export function bytesToText(bytes: Uint8Array): string {
  let text = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    text += String.fromCharCode(...bytes.subarray(i, Math.min(bytes.length, i + 8192)));
  }
  return text;
}

/** A string of char codes 0..255 as bytes; refuses anything wider, which is not a wire string. */
export function textToBytes(text: string): Uint8Array {
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code > 0xff) throw new TandemError(ErrorCode.BadArgument, `xenstore strings are bytes; '${text.slice(0, 40)}' has a character above 0xff`);
    bytes[i] = code;
  }
  return bytes;
}

/** Strings, each followed by a NUL (the `<foo>|*` of xenstore.txt). */
export function nulTerminated(strings: readonly string[]): Uint8Array {
  return textToBytes(strings.map((s) => `${s}\0`).join(""));
}

/**
 * A payload cut at its NULs: the NUL-terminated strings, and what follows the last NUL (empty
 * when the payload ends with a NUL, as a well-formed string list does).
 */
export function splitPayload(payload: Uint8Array): { strings: string[]; rest: Uint8Array } {
  const strings: string[] = [];
  let start = 0;
  for (let i = 0; i < payload.length; i++) {
    if (payload[i] !== 0) continue;
    strings.push(bytesToText(payload.subarray(start, i)));
    start = i + 1;
  }
  return { strings, rest: payload.subarray(start) };
}
