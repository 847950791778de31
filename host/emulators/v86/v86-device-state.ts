/**
 * The layout of the device state a V86Machine saves. v86's own (src/state.js) starts with a
 * JSON description of every device whose length changes with the numbers in it, followed by the
 * devices' buffers; a delta against the previous checkpoint's state (protocol/device-delta.ts)
 * compares page by page, so one more digit in the JSON would shift every buffer and make every
 * page differ. So tandem keeps the buffers first, at a fixed place, and moves the JSON behind
 * them, with a trailer to put v86's layout back together at restore.
 *
 * v86's layout: header { i32 magic 0x86768676, i32 version, i32 total length, i32 JSON length },
 * the JSON, zero pad to 4, the buffers. Tandem's: the buffers, the JSON, then a 16-byte trailer
 * { u32 JSON length, u32 buffers' length, u32 v86's version, u32 magic "T86S" }.
 */

import { ErrorCode, TandemError } from "../../errors.ts";

const V86_MAGIC = 0x86768676;
const V86_HEADER_BYTES = 16;
/** "T86S" read as a little-endian u32. */
const TANDEM_MAGIC = 0x53363854;
const TRAILER_BYTES = 16;

const align4 = (n: number) => Math.ceil(n / 4) * 4;

function bad(what: string): TandemError {
  return new TandemError(ErrorCode.StreamFormat, `a v86 device state ${what}`);
}

/** v86's state (from save_state) in tandem's layout. */
export function fromV86Layout(state: Uint8Array): Uint8Array {
  if (state.length < V86_HEADER_BYTES) throw bad(`of ${state.length} bytes has no header`);
  const view = new DataView(state.buffer, state.byteOffset, state.length);
  if (view.getUint32(0, true) !== V86_MAGIC) throw bad("from v86 does not start with v86's magic");
  const version = view.getUint32(4, true);
  const infoLength = view.getUint32(12, true);
  const buffersAt = align4(V86_HEADER_BYTES + infoLength);
  if (buffersAt > state.length) throw bad(`says its JSON has ${infoLength} bytes, past its end`);
  const buffers = state.length - buffersAt;
  const out = new Uint8Array(buffers + infoLength + TRAILER_BYTES);
  out.set(state.subarray(buffersAt), 0);
  out.set(state.subarray(V86_HEADER_BYTES, V86_HEADER_BYTES + infoLength), buffers);
  const trailer = new DataView(out.buffer, buffers + infoLength, TRAILER_BYTES);
  trailer.setUint32(0, infoLength, true);
  trailer.setUint32(4, buffers, true);
  trailer.setUint32(8, version, true);
  trailer.setUint32(12, TANDEM_MAGIC, true);
  return out;
}

/** A state in tandem's layout (or already in v86's, as older tandem saved it) in v86's layout, as a whole ArrayBuffer. */
export function toV86Layout(state: Uint8Array): ArrayBuffer {
  const view = new DataView(state.buffer, state.byteOffset, state.length);
  if (state.length >= V86_HEADER_BYTES && view.getUint32(0, true) === V86_MAGIC) return Uint8Array.prototype.slice.call(state).buffer as ArrayBuffer;
  if (state.length < TRAILER_BYTES || view.getUint32(state.length - 4, true) !== TANDEM_MAGIC) {
    throw bad("is neither in v86's layout nor in tandem's");
  }
  const infoLength = view.getUint32(state.length - 16, true);
  const buffers = view.getUint32(state.length - 12, true);
  const version = view.getUint32(state.length - 8, true);
  if (infoLength + buffers + TRAILER_BYTES !== state.length) throw bad(`of ${state.length} bytes says it holds ${buffers} + ${infoLength}`);
  const buffersAt = align4(V86_HEADER_BYTES + infoLength);
  const out = new Uint8Array(buffersAt + buffers);
  const header = new DataView(out.buffer, 0, V86_HEADER_BYTES);
  header.setUint32(0, V86_MAGIC, true);
  header.setUint32(4, version, true);
  header.setUint32(8, out.length, true);
  header.setUint32(12, infoLength, true);
  out.set(state.subarray(buffers, buffers + infoLength), V86_HEADER_BYTES);
  out.set(state.subarray(0, buffers), buffersAt);
  return out.buffer;
}
