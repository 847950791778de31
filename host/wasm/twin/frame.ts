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
const EVENT_HEADER = 1;
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
  const u8 = heap.u8;
  const w = heap.u32;
  const s = state >>> 2;
  let pos = 0;
  let n = 0;
  let stopped = 0;
  while (pos < len && n < maxEvents) {
    const left = w[s + S_LEFT / 4];
    if (left !== 0) {
      const take = Math.min(left, len - pos);
      const e = (events >>> 2) + n * 4;
      w[e] = EVENT_PAYLOAD;
      w[e + 1] = pos;
      w[e + 2] = take;
      w[e + 3] = 0;
      n++;
      pos += take;
      w[s + S_LEFT / 4] = left - take;
      if (left === take && stops(stopMask, w[s + S_CMD / 4])) {
        stopped = 1;
        break;
      }
      continue;
    }
    let header: number;
    const fill = w[s + S_FILL / 4];
    if (fill === 0 && len - pos >= HEADER_SIZE) {
      header = input + pos;
      pos += HEADER_SIZE;
    } else {
      const take = Math.min(HEADER_SIZE - fill, len - pos);
      u8.copyWithin(state + S_HEADER + fill, input + pos, input + pos + take);
      pos += take;
      if (fill + take < HEADER_SIZE) {
        w[s + S_FILL / 4] = fill + take;
        break;
      }
      w[s + S_FILL / 4] = 0;
      header = state + S_HEADER;
    }
    const cmd = u8[header] | (u8[header + 1] << 8);
    const id = u8[header + 2] | (u8[header + 3] << 8);
    const payloadLen = getU32(u8, header + 8);
    if (payloadLen > maxPayload) {
      w[s + S_ERROR / 4] = DECODE_TOO_LARGE;
      break;
    }
    const e = (events >>> 2) + n * 4;
    w[e] = EVENT_HEADER;
    w[e + 1] = (cmd | (id << 16)) >>> 0;
    w[e + 2] = getU32(u8, header + 4);
    w[e + 3] = payloadLen;
    n++;
    w[s + S_CMD / 4] = cmd;
    w[s + S_LEFT / 4] = payloadLen;
    if (payloadLen === 0 && stops(stopMask, cmd)) {
      stopped = 1;
      break;
    }
  }
  w[s + S_CONSUMED / 4] = pos;
  w[s + S_STOPPED / 4] = stopped;
  return n;
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
