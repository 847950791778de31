// Transaction frames: the 12-byte header of Kemari's ft_trans_file (seed 000), little-endian on
// the wire (the seed wrote a raw struct in host order, so two hosts of different byte order could
// not talk; Wasm is little-endian, so loads and stores below are the wire format):
//
//   offset  size  field
//   0       u16   cmd          (see host/protocol/frame.ts for the values)
//   2       u16   id           transaction id, wraps at 2^16
//   4       u32   seq          frame number within the transaction
//   8       u32   payload_len  bytes of payload that follow the header
//
// The decoder is incremental: input may be cut anywhere (inside a header, inside a payload), and
// what it needs between calls lives in a state struct in memory:
//
//   offset  size  field
//   0       u32   fill      header bytes collected so far (0..11)
//   4       u32   left      payload bytes of the current frame still to come
//   8       u32   consumed  input bytes the last call used
//   12      u32   error     0, or DECODE_TOO_LARGE
//   16      u32   cmd       cmd of the current frame
//   20      u8[12] header   the partial header
//   32      u32   stopped   1 if the last call stopped at the end of a stopMask frame
//
// It reports what it found as 16-byte events, four u32s each:
//
//   HEADER   kind=1, cmd | id << 16, seq, payload_len
//   PAYLOAD  kind=2, offset in the input, length, 0      (a frame's payload may come in pieces)

// @ts-ignore: decorator
@inline export const HEADER_SIZE: u32 = 12;
// @ts-ignore: decorator
@inline const CMD: usize = 0;
// @ts-ignore: decorator
@inline const ID: usize = 2;
// @ts-ignore: decorator
@inline const SEQ: usize = 4;
// @ts-ignore: decorator
@inline const LEN: usize = 8;

// @ts-ignore: decorator
@inline const S_FILL: usize = 0;
// @ts-ignore: decorator
@inline const S_LEFT: usize = 4;
// @ts-ignore: decorator
@inline const S_CONSUMED: usize = 8;
// @ts-ignore: decorator
@inline const S_ERROR: usize = 12;
// @ts-ignore: decorator
@inline const S_CMD: usize = 16;
// @ts-ignore: decorator
@inline const S_HEADER: usize = 20;
// @ts-ignore: decorator
@inline const S_STOPPED: usize = 32;

// @ts-ignore: decorator
@inline const EVENT_SIZE: usize = 16;
// @ts-ignore: decorator
@inline const EVENT_HEADER: u32 = 1;
// @ts-ignore: decorator
@inline const EVENT_PAYLOAD: u32 = 2;
// @ts-ignore: decorator
@inline const DECODE_TOO_LARGE: u32 = 1;

/**
 * Writes a frame at `out`: the header, then `len` payload bytes copied from `payload` (no copy
 * when the caller already put them at out + 12). Returns the frame's size.
 */
export function frame_encode(out: usize, cmd: u32, id: u32, seq: u32, payload: usize, len: u32): u32 {
  store<u16>(out, <u16>cmd, CMD);
  store<u16>(out, <u16>id, ID);
  store<u32>(out, seq, SEQ);
  store<u32>(out, len, LEN);
  const body = out + HEADER_SIZE;
  if (len != 0 && payload != body) memory.copy(body, payload, len);
  return HEADER_SIZE + len;
}

/**
 * Decodes `len` bytes at `input`, continuing from `state`. Writes at most `maxEvents` events at
 * `events` and returns how many. Stops early, with state.consumed telling how far it got:
 * - when the events are full;
 * - right after the end of a frame whose cmd has its bit set in `stopMask` (bit cmd & 31), so
 *   the caller can act on a finished transaction before reading on;
 * - on a header whose payload_len exceeds `maxPayload` (state.error = DECODE_TOO_LARGE; that
 *   header is not reported and the decoder must not be used again).
 */
export function frame_decode(
  state: usize, input: usize, len: u32, events: usize, maxEvents: u32, maxPayload: u32, stopMask: u32,
): u32 {
  let pos: u32 = 0;
  let n: u32 = 0;
  let stopped: u32 = 0;
  while (pos < len && n < maxEvents) {
    const left = load<u32>(state, S_LEFT);
    if (left != 0) {
      const take = min(left, len - pos);
      const e = events + (<usize>n << 4);
      store<u32>(e, EVENT_PAYLOAD);
      store<u32>(e, pos, 4);
      store<u32>(e, take, 8);
      store<u32>(e, 0, 12);
      n++;
      pos += take;
      store<u32>(state, left - take, S_LEFT);
      if (left == take && stops(stopMask, load<u32>(state, S_CMD))) {
        stopped = 1;
        break;
      }
      continue;
    }
    let header: usize;
    const fill = load<u32>(state, S_FILL);
    if (fill == 0 && len - pos >= HEADER_SIZE) {
      header = input + pos; // the common case: the whole header is in this input
      pos += HEADER_SIZE;
    } else {
      const take = min(HEADER_SIZE - fill, len - pos);
      memory.copy(state + S_HEADER + fill, input + pos, take);
      pos += take;
      if (fill + take < HEADER_SIZE) {
        store<u32>(state, fill + take, S_FILL);
        break;
      }
      store<u32>(state, 0, S_FILL);
      header = state + S_HEADER;
    }
    const cmd = <u32>load<u16>(header, CMD);
    const payloadLen = load<u32>(header, LEN);
    if (payloadLen > maxPayload) {
      store<u32>(state, DECODE_TOO_LARGE, S_ERROR);
      break;
    }
    const e = events + (<usize>n << 4);
    store<u32>(e, EVENT_HEADER);
    store<u32>(e, cmd | (<u32>load<u16>(header, ID) << 16), 4);
    store<u32>(e, load<u32>(header, SEQ), 8);
    store<u32>(e, payloadLen, 12);
    n++;
    store<u32>(state, cmd, S_CMD);
    store<u32>(state, payloadLen, S_LEFT);
    if (payloadLen == 0 && stops(stopMask, cmd)) {
      stopped = 1;
      break;
    }
  }
  store<u32>(state, pos, S_CONSUMED);
  store<u32>(state, stopped, S_STOPPED);
  return n;
}

// @ts-ignore: decorator
@inline function stops(mask: u32, cmd: u32): bool {
  return ((mask >>> (cmd & 31)) & 1) != 0;
}
