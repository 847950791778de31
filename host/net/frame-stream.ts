/**
 * Ethernet frames over a byte stream, framed as QEMU's `-netdev stream` and passt's Unix socket
 * carry them: each frame is preceded by its length as a 32-bit big-endian integer, and nothing
 * else (QEMU net/stream.c; passt tap.c, "qemu socket" mode).
 */

import { ErrorCode, TandemError } from "../errors.ts";

/** Bytes of the length prefix. */
export const LENGTH_PREFIX_SIZE = 4;
/** The smallest frame: destination, source and EtherType (a runt is not a frame). */
export const MIN_FRAME_SIZE = 14;
/**
 * The largest frame accepted from a peer. passt offers up to 65520 bytes of MTU; a v86 NIC sends
 * at most 1514. A larger length means a broken or hostile stream, not a frame.
 */
export const MAX_FRAME_SIZE = 65_535 + 14;

/** One frame with its length prefix, ready to write. */
export function encodeFrame(frame: Uint8Array): Uint8Array {
  if (frame.length < MIN_FRAME_SIZE || frame.length > MAX_FRAME_SIZE) {
    throw new TandemError(ErrorCode.BadArgument, `an Ethernet frame of ${frame.length} bytes: expected ${MIN_FRAME_SIZE} to ${MAX_FRAME_SIZE}`);
  }
  const out = new Uint8Array(LENGTH_PREFIX_SIZE + frame.length);
  new DataView(out.buffer).setUint32(0, frame.length, false);
  out.set(frame, LENGTH_PREFIX_SIZE);
  return out;
}

/** Where the decoder is between chunks. */
const enum DecoderState {
  /** Collecting the 4 bytes of a length. */
  Length,
  /** Collecting a frame's bytes. */
  Body,
  /** A bad length was seen: the stream cannot be resynchronised. */
  Broken,
}

/**
 * Splits a byte stream into frames, whatever the chunk boundaries. A length outside
 * [{@link MIN_FRAME_SIZE}, {@link MAX_FRAME_SIZE}] breaks the stream for good (E_NET_FRAME):
 * with no marker between frames there is no way to find the next one.
 */
export class FrameStreamDecoder {
  #state = DecoderState.Length;
  readonly #lengthBytes = new Uint8Array(LENGTH_PREFIX_SIZE);
  #lengthHave = 0;
  #body: Uint8Array = new Uint8Array(0);
  #bodyHave = 0;

  /** Feeds `chunk`; returns the frames it completed, each a fresh copy. */
  push(chunk: Uint8Array): Uint8Array[] {
    if (this.#state === DecoderState.Broken) throw this.#broken();
    const frames: Uint8Array[] = [];
    let at = 0;
    while (at < chunk.length) {
      if (this.#state === DecoderState.Length) {
        const take = Math.min(LENGTH_PREFIX_SIZE - this.#lengthHave, chunk.length - at);
        this.#lengthBytes.set(chunk.subarray(at, at + take), this.#lengthHave);
        this.#lengthHave += take;
        at += take;
        if (this.#lengthHave < LENGTH_PREFIX_SIZE) break;
        const length = new DataView(this.#lengthBytes.buffer).getUint32(0, false);
        this.#lengthHave = 0;
        if (length < MIN_FRAME_SIZE || length > MAX_FRAME_SIZE) {
          this.#state = DecoderState.Broken;
          throw new TandemError(ErrorCode.NetFrame, `a frame length of ${length} in the stream: expected ${MIN_FRAME_SIZE} to ${MAX_FRAME_SIZE}; the peer does not speak QEMU's stream framing`);
        }
        this.#body = new Uint8Array(length);
        this.#bodyHave = 0;
        this.#state = DecoderState.Body;
      } else {
        const take = Math.min(this.#body.length - this.#bodyHave, chunk.length - at);
        this.#body.set(chunk.subarray(at, at + take), this.#bodyHave);
        this.#bodyHave += take;
        at += take;
        if (this.#bodyHave === this.#body.length) {
          frames.push(this.#body);
          this.#state = DecoderState.Length;
        }
      }
    }
    return frames;
  }

  /** Bytes of a frame or length received but not yet complete (0 at a frame boundary). */
  get pending(): number {
    return this.#state === DecoderState.Body ? LENGTH_PREFIX_SIZE + this.#bodyHave : this.#lengthHave;
  }

  #broken(): TandemError {
    return new TandemError(ErrorCode.NetFrame, "the frame stream broke earlier on a bad length; reconnect");
  }
}
