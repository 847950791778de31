/**
 * Plain-TypeScript twin of assembly/frame.ts: the same header, state struct and events, byte for
 * byte (see that file for the layouts). `state` and `events` must be 4-byte aligned.
 */

import type { Heap } from "../heap.ts";

const HEADER_SIZE = 12;
const S_FILL = 0;
const S_LEFT = 4;
const S_CONSUMED = 8;
const S_ERROR = 12;
const S_CMD = 16;
const S_HEADER = 20;
const S_STOPPED = 32;
/** Event kinds, as the kernel writes them. */
export const EVENT_HEADER = 1;
const EVENT_PAYLOAD = 2;
const DECODE_TOO_LARGE = 1;

/** Writes the header at `out` and copies the payload after it unless it is already there. */
export function frameEncode(heap: Heap, out: number, cmd: number, id: number, seq: number, payload: number, len: number): number {
  const u8 = heap.u8;
  u8[out] = cmd & 0xff;
  u8[out + 1] = (cmd >>> 8) & 0xff;
  u8[out + 2] = id & 0xff;
  u8[out + 3] = (id >>> 8) & 0xff;
  putU32(u8, out + 4, seq);
  putU32(u8, out + 8, len);
  const body = out + HEADER_SIZE;
  if (len !== 0 && payload !== body) u8.copyWithin(body, payload, payload + len);
  return HEADER_SIZE + len;
}

/** Incremental decode; see assembly/frame.ts frame_decode for the contract. */
export function frameDecode(
  heap: Heap, state: number, input: number, len: number, events: number, maxEvents: number, maxPayload: number, stopMask: number,
): number {
  const w = heap.u32;
  const s = state >>> 2;
  const st: ScanState = {
    fill: w[s + S_FILL / 4],
    left: w[s + S_LEFT / 4],
    cmd: w[s + S_CMD / 4],
    header: heap.u8.slice(state + S_HEADER, state + S_HEADER + HEADER_SIZE),
  };
  let n = 0;
  const result = scanFrames(st, heap.u8, input, len, maxEvents, maxPayload, stopMask, (kind, a, b, c) => {
    const e = (events >>> 2) + n++ * 4;
    w[e] = kind;
    w[e + 1] = a;
    w[e + 2] = b;
    w[e + 3] = c;
  });
  w[s + S_FILL / 4] = st.fill;
  w[s + S_LEFT / 4] = st.left;
  w[s + S_CMD / 4] = st.cmd;
  heap.u8.set(st.header, state + S_HEADER);
  w[s + S_CONSUMED / 4] = result.consumed;
  w[s + S_STOPPED / 4] = result.stopped ? 1 : 0;
  if (result.tooLarge) w[s + S_ERROR / 4] = DECODE_TOO_LARGE;
  return n;
}

/** What the decoder carries between calls: the fields of the kernel's state struct. */
export interface ScanState {
  /** Header bytes collected so far (0..11). */
  fill: number;
  /** Payload bytes of the current frame still to come. */
  left: number;
  /** Command of the current frame. */
  cmd: number;
  /** The partial header (12 bytes). */
  header: Uint8Array;
}

/** How a {@link scanFrames} call ended. */
export interface ScanResult {
  /** Input bytes used. */
  consumed: number;
  /** It stopped right after a frame in the stop mask. */
  stopped: boolean;
  /** A header announced more than maxPayload; the state must not be used again. */
  tooLarge: boolean;
}

/** A fresh decoder state. */
export function newScanState(): ScanState {
  return { fill: 0, left: 0, cmd: 0, header: new Uint8Array(HEADER_SIZE) };
}

/**
 * The frame decoding algorithm of assembly/frame.ts over any byte array: `len` bytes of `bytes`
 * from `from`, emitting at most `maxEvents` events as (kind, a, b, c) with the kernel's meaning
 * (HEADER: cmd | id << 16, seq, payload_len; PAYLOAD: offset from `from`, length, 0). The twin
 * runs it over its heap; the receiver runs it over the socket's own chunks, with no copy.
 */
export function scanFrames(
  st: ScanState, bytes: Uint8Array, from: number, len: number, maxEvents: number, maxPayload: number, stopMask: number,
  emit: (kind: number, a: number, b: number, c: number) => void,
): ScanResult {
  let pos = 0;
  let n = 0;
  while (pos < len && n < maxEvents) {
    if (st.left !== 0) {
      const take = Math.min(st.left, len - pos);
      emit(EVENT_PAYLOAD, pos, take, 0);
      n++;
      pos += take;
      st.left -= take;
      if (st.left === 0 && stops(stopMask, st.cmd)) return { consumed: pos, stopped: true, tooLarge: false };
      continue;
    }
    let header: Uint8Array;
    let h: number;
    if (st.fill === 0 && len - pos >= HEADER_SIZE) {
      header = bytes; // the common case: the whole header is in this input
      h = from + pos;
      pos += HEADER_SIZE;
    } else {
      const take = Math.min(HEADER_SIZE - st.fill, len - pos);
      st.header.set(bytes.subarray(from + pos, from + pos + take), st.fill);
      pos += take;
      st.fill += take;
      if (st.fill < HEADER_SIZE) break;
      st.fill = 0;
      header = st.header;
      h = 0;
    }
    const cmd = header[h] | (header[h + 1] << 8);
    const id = header[h + 2] | (header[h + 3] << 8);
    const payloadLen = getU32(header, h + 8);
    if (payloadLen > maxPayload) return { consumed: pos, stopped: false, tooLarge: true };
    emit(EVENT_HEADER, (cmd | (id << 16)) >>> 0, getU32(header, h + 4), payloadLen);
    n++;
    st.cmd = cmd;
    st.left = payloadLen;
    if (payloadLen === 0 && stops(stopMask, cmd)) return { consumed: pos, stopped: true, tooLarge: false };
  }
  return { consumed: pos, stopped: false, tooLarge: false };
}

function stops(mask: number, cmd: number): boolean {
  return ((mask >>> (cmd & 31)) & 1) !== 0;
}

function putU32(u8: Uint8Array, at: number, v: number): void {
  u8[at] = v & 0xff;
  u8[at + 1] = (v >>> 8) & 0xff;
  u8[at + 2] = (v >>> 16) & 0xff;
  u8[at + 3] = (v >>> 24) & 0xff;
}

function getU32(u8: Uint8Array, at: number): number {
  return (u8[at] | (u8[at + 1] << 8) | (u8[at + 2] << 16) | (u8[at + 3] << 24)) >>> 0;
}
