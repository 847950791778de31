/**
 * Transaction frames: commands, sizes, and the incremental decoder that drives the frame kernel
 * (assembly/frame.ts has the byte layouts of the header, the decoder state and the events).
 */

import { ErrorCode, TandemError } from "../errors.ts";
import type { Heap } from "../wasm/heap.ts";
import type { Kernels } from "../wasm/kernels.ts";
import { EVENT_HEADER as SCAN_HEADER, newScanState, scanFrames, type ScanState } from "../wasm/twin/frame.ts";

/**
 * Frame commands. The values are seed 000's, but for NACK: the seed numbered it -1, which a u16
 * field carries as 0xFFFF, and never sent it; here it is 7. INIT names a state and never travels.
 */
export const Cmd = {
  Init: 0,
  Begin: 1,
  Continue: 2,
  Commit: 3,
  Cancel: 4,
  Atomic: 5,
  Ack: 6,
  Nack: 7,
} as const;
/** One of {@link Cmd}. */
export type Cmd = (typeof Cmd)[keyof typeof Cmd];

/** Names of the commands, for traces and errors. */
export const CMD_NAMES: Readonly<Record<number, string>> = Object.fromEntries(
  Object.entries(Cmd).map(([name, value]) => [value, name.toUpperCase()]),
);

/** Bytes in a frame header. */
export const HEADER_SIZE = 12;
/** Bytes of the decoder's state struct (assembly/frame.ts), rounded up to 8. */
export const DECODER_STATE_SIZE = 40;
/** Bytes per decoder event. */
export const EVENT_SIZE = 16;
/** The payload_len field is a u32. */
export const MAX_FRAME_PAYLOAD = 0xffff_ffff;

const EVENT_HEADER = 1;
const S = { fill: 0, left: 1, consumed: 2, error: 3, stopped: 8 } as const; // u32 indices into the state struct

/** Receives what the decoder finds, in stream order. */
export interface FrameSink {
  /** A complete frame header. */
  header(cmd: number, id: number, seq: number, payloadLength: number): void;
  /** A piece of the current frame's payload, at `offset` in the heap. */
  payload(offset: number, length: number): void;
}

/** A bit mask of commands for {@link FrameDecoder.decode}'s `stopAfter`. */
export function cmdMask(...cmds: readonly number[]): number {
  return cmds.reduce((mask, cmd) => mask | (1 << cmd), 0);
}

/** Options of a {@link FrameDecoder}. */
export interface FrameDecoderOptions {
  /** Largest payload_len accepted; a larger one is E_PAYLOAD_TOO_LARGE. */
  maxPayload: number;
  /** Events per kernel call (each takes 16 bytes of heap). Default 256. */
  maxEvents?: number;
}

/** Decodes a frame stream held in a heap, cut anywhere, carrying its state between calls. */
export class FrameDecoder {
  readonly #heap: Heap;
  readonly #kernels: Kernels;
  readonly #state: number;
  readonly #events: number;
  readonly #maxEvents: number;
  readonly #maxPayload: number;

  /** Allocates its state and event buffer in `heap`; decodes with `kernels` (over the same heap). */
  constructor(heap: Heap, kernels: Kernels, options: FrameDecoderOptions) {
    if (!Number.isInteger(options.maxPayload) || options.maxPayload < 0 || options.maxPayload > MAX_FRAME_PAYLOAD) {
      throw new TandemError(ErrorCode.BadArgument, `maxPayload ${options.maxPayload}: expected 0 to ${MAX_FRAME_PAYLOAD}`);
    }
    this.#heap = heap;
    this.#kernels = kernels;
    this.#maxPayload = options.maxPayload;
    this.#maxEvents = options.maxEvents ?? 256;
    this.#state = heap.alloc(DECODER_STATE_SIZE);
    this.#events = heap.alloc(this.#maxEvents * EVENT_SIZE);
  }

  /**
   * Decodes heap bytes [ptr, ptr + len). Returns how many it consumed: all of them, unless a
   * frame whose command is in `stopAfter` ended first (then the rest is for the next call).
   * A payload_len over the limit throws E_PAYLOAD_TOO_LARGE and leaves the decoder unusable.
   */
  decode(ptr: number, len: number, stopAfter: number, sink: FrameSink): number {
    let done = 0;
    while (done < len) {
      const n = this.#kernels.frameDecode(this.#state, ptr + done, len - done, this.#events, this.#maxEvents, this.#maxPayload, stopAfter);
      const words = this.#heap.u32;
      const s = this.#state >>> 2;
      const base = ptr + done;
      for (let i = 0, e = this.#events >>> 2; i < n; i++, e += 4) {
        if (words[e] === EVENT_HEADER) sink.header(words[e + 1] & 0xffff, words[e + 1] >>> 16, words[e + 2], words[e + 3]);
        else sink.payload(base + words[e + 1], words[e + 2]);
      }
      if (words[s + S.error] !== 0) {
        throw new TandemError(ErrorCode.PayloadTooLarge, `a frame announces more than ${this.#maxPayload} bytes of payload`);
      }
      done += words[s + S.consumed];
      if (words[s + S.stopped] !== 0) break;
    }
    return done;
  }

  /** True when the stream so far ends inside a frame header. */
  get inHeader(): boolean {
    return this.#heap.u32[(this.#state >>> 2) + S.fill] !== 0;
  }

  /** True when the stream so far ends inside a frame's payload. */
  get inPayload(): boolean {
    return this.#heap.u32[(this.#state >>> 2) + S.left] !== 0;
  }
}

/** Receives what a {@link ChunkFrameDecoder} finds, in stream order. */
export interface ChunkSink {
  /** A complete frame header. */
  header(cmd: number, id: number, seq: number, payloadLength: number): void;
  /** A piece of the current frame's payload: a view into the chunk being decoded. */
  payload(bytes: Uint8Array): void;
}

/**
 * Decodes frames straight out of the chunks a transport delivers, with no copy into Wasm memory.
 * For bytes that live outside any heap this beats the kernel: the only per-byte work is the copy
 * into the kernel's memory, and that copy costs more than the header parsing it would speed up
 * (docs/protocol.md, Performance). It runs the twin's algorithm, which the tests hold to the kernel.
 */
export class ChunkFrameDecoder {
  readonly #state: ScanState = newScanState();
  readonly #maxPayload: number;

  constructor(maxPayload: number) {
    if (!Number.isInteger(maxPayload) || maxPayload < 0 || maxPayload > MAX_FRAME_PAYLOAD) {
      throw new TandemError(ErrorCode.BadArgument, `maxPayload ${maxPayload}: expected 0 to ${MAX_FRAME_PAYLOAD}`);
    }
    this.#maxPayload = maxPayload;
  }

  /**
   * Decodes `chunk` from byte `from`; returns how many bytes it consumed: all of them, unless a
   * frame whose command is in `stopAfter` ended first. A payload_len over the limit throws
   * E_PAYLOAD_TOO_LARGE and leaves the decoder unusable.
   */
  decode(chunk: Uint8Array, from: number, stopAfter: number, sink: ChunkSink): number {
    const result = scanFrames(this.#state, chunk, from, chunk.length - from, Infinity, this.#maxPayload, stopAfter, (kind, a, b, c) => {
      if (kind === SCAN_HEADER) sink.header(a & 0xffff, a >>> 16, b, c);
      else sink.payload(chunk.subarray(from + a, from + a + b));
    });
    if (result.tooLarge) {
      throw new TandemError(ErrorCode.PayloadTooLarge, `a frame announces more than ${this.#maxPayload} bytes of payload`);
    }
    return result.consumed;
  }

  /** True when the stream so far ends inside a frame header. */
  get inHeader(): boolean {
    return this.#state.fill !== 0;
  }

  /** True when the stream so far ends inside a frame's payload. */
  get inPayload(): boolean {
    return this.#state.left !== 0;
  }
}
