/**
 * The receiving side of a transaction session (seed 000's ft_trans_file, as a receiver).
 *
 * It opens the session with an ACK, buffers each transaction, and hands it whole to its consumer
 * only at COMMIT (or at once for ATOMIC); a transaction that is cancelled, cut off by the peer,
 * or broken in any way never reaches the consumer. The answer goes out after the consumer has
 * finished: ACK if it returned (or its promise resolved), NACK if it threw. (The seed sent ACK
 * before applying; then an ACK could stand for a checkpoint the standby never had.)
 *
 * No byte is copied on the way in: frames are decoded straight out of the chunks the transport
 * hands over (they are the receiver's from then on), and the consumer gets the payloads as views
 * into them, valid until it returns. How much may be held is bounded: one frame's payload by
 * `maxFramePayload`, one transaction by `maxTransactionBytes`, and the memory a transaction pins
 * (its chunks) by about the two together. A payload piece in a chunk that is mostly empty is
 * copied instead of pinning the chunk's whole buffer, so a peer that trickles tiny packets cannot
 * make the receiver hold many times what it sent.
 *
 * A pipelining sender (its `window` option) sends the next transactions before this one's
 * answer. Nothing changes here: what arrives while the consumer runs waits undecoded, then the
 * transactions are applied strictly in order and each is answered on its own (ACK, NACK, or
 * CANCEL if this side cancelled it), so a refused or cancelled one does not touch the ones
 * behind it. The sender's window bounds what is queued: the transaction being applied and at
 * most `window - 1` behind it. The bound on held bytes above covers them all together, so a
 * sender's window times its transaction size must fit in it (see `maxTransactionBytes`).
 */

import { ErrorCode, TandemError } from "../errors.ts";
import { tracerFor, type Tracer } from "../trace.ts";
import { Heap } from "../wasm/heap.ts";
import { kernelsFor, type KernelFlavor, type Kernels } from "../wasm/kernels.ts";
import { CMD_NAMES, ChunkFrameDecoder, Cmd, HEADER_SIZE, cmdMask, type ChunkSink } from "./frame.ts";
import { SessionState, isIdle, receiverTransition, type ReceiverEvent } from "./session-state.ts";
import type { Transport } from "./transport.ts";

/** A whole transaction, as the consumer sees it. */
export interface ReceivedTransaction {
  /** The transaction id. */
  readonly id: number;
  /** True if it came as one ATOMIC frame. */
  readonly atomic: boolean;
  /** The payloads in order: views valid until the consumer returns (copy what you keep). */
  readonly segments: readonly Uint8Array[];
  /** Total payload bytes. */
  readonly byteLength: number;
  /** All payload bytes in one new array. */
  bytes(): Uint8Array;
}

/** Applies a transaction; throwing (or rejecting) refuses it with a NACK. */
export type TransactionConsumer = (transaction: ReceivedTransaction) => void | Promise<void>;

/** Options of a {@link TransactionReceiver}. */
export interface ReceiverOptions {
  /** Largest payload of one frame. Default 1 MiB. */
  maxFramePayload?: number;
  /**
   * Largest total payload of one transaction. Default 256 MiB. What the receiver holds at once
   * (a transaction and the input queued behind it) is bounded by this plus `maxFramePayload`
   * plus 1 MiB; with a pipelining sender that covers all the transactions of its window.
   */
  maxTransactionBytes?: number;
  /** Longest silence allowed inside an open transaction, in ms; 0 for none. Default 0. */
  idleTimeoutMs?: number;
  /** Which kernels encode the answers; default: see {@link defaultFlavor}. */
  kernels?: KernelFlavor;
}

/** What a receiver has done, and what it holds. */
export interface ReceiverStats {
  applied: number;
  refused: number;
  /** Transactions the sender cancelled, and ones this receiver cancelled. */
  cancelledBySender: number;
  cancelledHere: number;
  /** Bytes received from the transport. */
  bytes: number;
  /** Bytes held now (the open transaction's chunks and undecoded input), and the most held at once. */
  bufferedBytes: number;
  peakBufferedBytes: number;
}

const STOP = cmdMask(Cmd.Commit, Cmd.Atomic, Cmd.Cancel);
const RECV_EVENT: Partial<Record<number, ReceiverEvent>> = {
  [Cmd.Begin]: "recv-begin",
  [Cmd.Continue]: "recv-continue",
  [Cmd.Commit]: "recv-commit",
  [Cmd.Atomic]: "recv-atomic",
  [Cmd.Cancel]: "recv-cancel",
};

/** The receiving side of a transaction session. */
export class TransactionReceiver implements ChunkSink {
  readonly #transport: Transport;
  readonly #consumer: TransactionConsumer;
  readonly #heap: Heap;
  readonly #kernels: Kernels;
  readonly #decoder: ChunkFrameDecoder;
  readonly #trace: Tracer | undefined;
  readonly #maxTransaction: number;
  readonly #maxBuffered: number;
  readonly #idleMs: number;
  readonly #answer: number;
  /** Delivered chunks not yet fully decoded, oldest first, with how far each was read. */
  #pending: { chunk: Uint8Array; at: number }[] = [];
  #pendingBytes = 0;
  /** The chunk being decoded (its payload pieces become segments). */
  #chunk: Uint8Array | undefined;
  #state: SessionState = SessionState.Init;
  #expectedId = 0;
  #lastSeq = 0;
  #segments: Uint8Array[] = [];
  #txnBytes = 0;
  /** Memory the open transaction's segments pin, and the last buffer counted in it. */
  #pinned = 0;
  #pinnedBuffer: ArrayBufferLike | undefined;
  #frameLeft = 0;
  #complete = false;
  #cancelledId: number | undefined;
  #dropping = false;
  #applying = false;
  #peerGone: Error | undefined | null = null;
  #idleTimer: ReturnType<typeof setTimeout> | undefined;
  #error: TandemError | undefined;
  #ended = false;
  readonly #done: Promise<void>;
  #resolveDone!: () => void;
  #rejectDone!: (error: Error) => void;
  readonly #stats: ReceiverStats = {
    applied: 0, refused: 0, cancelledBySender: 0, cancelledHere: 0, bytes: 0, bufferedBytes: 0, peakBufferedBytes: 0,
  };

  constructor(transport: Transport, consumer: TransactionConsumer, options: ReceiverOptions = {}) {
    const maxFrame = options.maxFramePayload ?? 1 << 20;
    this.#maxTransaction = options.maxTransactionBytes ?? 256 << 20;
    if (!Number.isInteger(this.#maxTransaction) || this.#maxTransaction < 0) {
      throw new TandemError(ErrorCode.BadArgument, `maxTransactionBytes ${this.#maxTransaction}: expected a non-negative integer`);
    }
    // A transaction's payload, its headers, and one more frame in flight behind it; for a
    // pipelining sender, also the transactions it sent behind the one being applied.
    this.#maxBuffered = this.#maxTransaction + maxFrame + 2 * HEADER_SIZE + (1 << 20);
    this.#idleMs = options.idleTimeoutMs ?? 0;
    this.#transport = transport;
    this.#consumer = consumer;
    this.#heap = Heap.create(256);
    this.#kernels = kernelsFor(this.#heap, options.kernels);
    this.#answer = this.#heap.alloc(HEADER_SIZE);
    this.#decoder = new ChunkFrameDecoder(maxFrame);
    this.#trace = tracerFor("protocol");
    this.#done = new Promise<void>((resolve, reject) => {
      this.#resolveDone = resolve;
      this.#rejectDone = reject;
    });
    this.#done.catch(() => {}); // reported through `done`; never an unhandled rejection
    transport.onData((chunk) => this.#received(chunk));
    transport.onClose((error) => this.#closed(error));
  }

  /** The session state (see session-state.ts). */
  get state(): SessionState {
    return this.#state;
  }

  /** The id the next (or the open) transaction must carry. */
  get expectedId(): number {
    return this.#expectedId;
  }

  /** A snapshot of the counters. */
  get stats(): ReceiverStats {
    return { ...this.#stats };
  }

  /** The error that ended the session, if one did. */
  get error(): TandemError | undefined {
    return this.#error;
  }

  /** Settles when the session ends: resolves if the peer closed between transactions, else rejects with the error. */
  get done(): Promise<void> {
    return this.#done;
  }

  /** Opens the session: the ACK that tells the sender to begin. */
  open(): void {
    this.#guard(() => {
      this.#step("open");
      this.#send(Cmd.Ack, 0);
    });
  }

  /** Refuses the transaction in progress (CANCEL); its frames still in flight are dropped. */
  cancel(): void {
    this.#guard(() => {
      this.#step("cancel");
      this.#send(Cmd.Cancel, this.#expectedId);
      this.#cancelledId = this.#expectedId;
      this.#expectedId = (this.#expectedId + 1) & 0xffff;
      this.#release();
      this.#stats.cancelledHere++;
      this.#idle();
    });
  }

  /** Ends the session and closes the transport. */
  close(): void {
    this.#fail(new TandemError(ErrorCode.InvalidState, "the receiver was closed"));
  }

  // --- ChunkSink: called by the decoder, in stream order ---------------------------------------

  /** @internal */
  header(cmd: number, id: number, seq: number, payloadLength: number): void {
    this.#trace?.("recv_header", { cmd: CMD_NAMES[cmd] ?? cmd, id, seq, len: payloadLength });
    if (this.#cancelledId !== undefined) {
      if (id === this.#cancelledId) {
        this.#dropping = true; // the rest of a transaction this side cancelled
        return;
      }
      this.#cancelledId = undefined;
    }
    this.#dropping = false;
    const event = RECV_EVENT[cmd];
    if (cmd > Cmd.Nack) throw new TandemError(ErrorCode.RecvHeader, `unknown command ${cmd} in a frame header`);
    if (event === undefined) throw new TandemError(ErrorCode.InvalidState, `a sender never sends ${CMD_NAMES[cmd]}`);
    if (payloadLength !== 0 && cmd !== Cmd.Continue && cmd !== Cmd.Atomic) {
      throw new TandemError(ErrorCode.RecvHeader, `${CMD_NAMES[cmd]} carries no payload, but its header announces ${payloadLength} bytes`);
    }
    if (this.#state === SessionState.Init) throw new TandemError(ErrorCode.InvalidState, `${CMD_NAMES[cmd]} before the session was opened`);
    if (id !== this.#expectedId) throw new TandemError(ErrorCode.IdMismatch, `${CMD_NAMES[cmd]} for transaction ${id}, expected ${this.#expectedId}`);
    const first = cmd === Cmd.Begin || cmd === Cmd.Atomic;
    const wantSeq = first ? 0 : (this.#lastSeq + 1) >>> 0;
    if (seq !== wantSeq) throw new TandemError(ErrorCode.SeqMismatch, `${CMD_NAMES[cmd]} with seq ${seq}, expected ${wantSeq}`);
    this.#step(event);
    this.#lastSeq = seq;
    if (first) this.#release();
    this.#frameLeft = payloadLength;
    if (cmd === Cmd.Commit || (cmd === Cmd.Atomic && payloadLength === 0)) this.#complete = true;
    if (cmd === Cmd.Cancel) {
      this.#release();
      this.#expectedId = (this.#expectedId + 1) & 0xffff;
      this.#stats.cancelledBySender++;
    }
  }

  /** @internal */
  payload(bytes: Uint8Array): void {
    if (this.#dropping) return;
    const chunk = this.#chunk!;
    // Keep a view when the chunk fills most of its buffer; else copy, not to pin a mostly empty buffer.
    let segment = bytes;
    if (chunk.length * 2 >= chunk.buffer.byteLength) {
      if (chunk.buffer !== this.#pinnedBuffer) {
        this.#pinned += chunk.buffer.byteLength;
        this.#pinnedBuffer = chunk.buffer;
      }
    } else {
      segment = bytes.slice();
      this.#pinned += segment.length;
    }
    this.#segments.push(segment);
    this.#txnBytes += bytes.length;
    if (this.#txnBytes > this.#maxTransaction) {
      throw new TandemError(ErrorCode.PayloadTooLarge, `transaction ${this.#expectedId} passed ${this.#maxTransaction} bytes`);
    }
    this.#account();
    this.#frameLeft -= bytes.length;
    if (this.#state === SessionState.Atomic && this.#frameLeft === 0) this.#complete = true;
  }

  // --- the byte stream -----------------------------------------------------------------------

  #received(chunk: Uint8Array): void {
    if (this.#error || this.#ended) return;
    this.#stats.bytes += chunk.length;
    this.#quietly(() => {
      this.#pending.push({ chunk, at: 0 });
      this.#pendingBytes += chunk.length;
      this.#account();
      if (this.#applying) return; // decoded once the consumer is done
      this.#pump();
      this.#armIdleTimer(); // after decoding: this chunk may have opened a transaction
    });
  }

  /** Checks what is held against the bound, and records the peak. */
  #account(): void {
    const held = this.#pinned + this.#pendingBytes;
    if (held > this.#maxBuffered) {
      throw this.#die(new TandemError(ErrorCode.PayloadTooLarge, `the sender pushed more than ${this.#maxBuffered} bytes: one transaction's, or a pipelining sender's queued behind the one being applied`));
    }
    this.#stats.bufferedBytes = held;
    if (held > this.#stats.peakBufferedBytes) this.#stats.peakBufferedBytes = held;
  }

  /**
   * Decodes pending chunks, delivering each transaction as it completes. A consumer that returns
   * at once is answered at once and decoding goes on in this loop; one that returns a promise
   * stops it until the promise settles (then #consumerSettled pumps again).
   */
  #pump(): void {
    while (!this.#applying && !this.#error && this.#pending.length > 0) {
      const head = this.#pending[0];
      this.#chunk = head.chunk;
      const used = this.#decoder.decode(head.chunk, head.at, STOP, this);
      head.at += used;
      this.#pendingBytes -= used;
      if (head.at === head.chunk.length) this.#pending.shift();
      if (this.#complete) {
        this.#complete = false;
        this.#deliver();
      }
    }
    this.#chunk = undefined;
    this.#stats.bufferedBytes = this.#pinned + this.#pendingBytes;
  }

  /** Hands the complete transaction to the consumer, and answers it when the consumer is done. */
  #deliver(): void {
    this.#applying = true;
    this.#idle();
    const id = this.#expectedId;
    const segments = this.#segments;
    const byteLength = this.#txnBytes;
    const transaction = new Delivered(id, this.#state === SessionState.Atomic, segments, byteLength);
    this.#trace?.("deliver", { id, bytes: byteLength, segments: segments.length });
    let result: void | Promise<void>;
    try {
      result = this.#consumer(transaction);
    } catch (error) {
      this.#reply(id, error ?? new Error("refused"));
      return;
    }
    if (!isThenable(result)) {
      this.#reply(id, undefined);
      return;
    }
    result.then(
      () => this.#consumerSettled(id, undefined),
      (error: unknown) => this.#consumerSettled(id, error ?? new Error("refused")),
    );
  }

  /** After a consumer's promise settled: answers, then decodes what queued up meanwhile. */
  #consumerSettled(id: number, refusal: unknown): void {
    if (this.#error) {
      this.#applying = false;
      this.#release();
      return;
    }
    this.#quietly(() => {
      this.#reply(id, refusal);
      this.#pump();
      this.#armIdleTimer();
      // A close that came while the consumer ran takes effect once what came before it is decoded.
      if (!this.#applying && this.#peerGone !== null) this.#closed(this.#peerGone ?? undefined);
    });
  }

  /** Ends the delivery of transaction `id`: ACK, or NACK if the consumer refused it. */
  #reply(id: number, refusal: unknown): void {
    this.#applying = false;
    this.#release();
    if (this.#error) return;
    if (refusal === undefined) {
      this.#step("applied");
      this.#stats.applied++;
      this.#send(Cmd.Ack, id);
    } else {
      this.#trace?.("refuse", { id, reason: refusal instanceof Error ? refusal.message : String(refusal) });
      this.#step("refused");
      this.#stats.refused++;
      this.#send(Cmd.Nack, id);
    }
    this.#expectedId = (id + 1) & 0xffff;
  }

  /** Drops the open transaction's segments (and what they pin). */
  #release(): void {
    this.#segments = [];
    this.#txnBytes = 0;
    this.#pinned = 0;
    this.#pinnedBuffer = undefined;
  }

  #send(cmd: number, id: number): void {
    this.#trace?.("send_header", { cmd: CMD_NAMES[cmd], id });
    this.#kernels.frameEncode(this.#answer, cmd, id, 0, 0, 0);
    // A copy: the answer slot is reused at once, and the transport may keep the chunk.
    this.#transport.write(this.#heap.u8.slice(this.#answer, this.#answer + HEADER_SIZE), (error) => {
      if (!error) return;
      const gone = error instanceof TandemError && error.code === ErrorCode.PeerClosed;
      this.#fail(gone
        ? new TandemError(ErrorCode.PeerClosed, `the sender went away before ${CMD_NAMES[cmd]} of transaction ${id} could reach it`)
        : new TandemError(ErrorCode.SendHeader, `could not send ${CMD_NAMES[cmd]}: ${error.message}`));
    });
  }

  // --- the end of the session ----------------------------------------------------------------

  #closed(error: Error | undefined): void {
    if (this.#error || this.#ended) return;
    if (this.#applying) {
      this.#peerGone = error; // the consumer finishes the complete transaction first
      return;
    }
    this.#idle();
    if (this.#decoder.inHeader) {
      this.#fail(new TandemError(ErrorCode.RecvHeader, "the sender's stream ended inside a frame header"));
    } else if (this.#decoder.inPayload) {
      this.#fail(new TandemError(ErrorCode.RecvPayload, "the sender's stream ended inside a frame's payload"));
    } else if (!isIdle(this.#state) && this.#state !== SessionState.Init) {
      this.#fail(new TandemError(ErrorCode.PeerClosed, `the sender went away in the middle of transaction ${this.#expectedId}`));
    } else if (error) {
      this.#fail(new TandemError(ErrorCode.PeerClosed, `the connection broke: ${error.message}`));
    } else {
      this.#ended = true;
      this.#trace?.("closed", { id: this.#expectedId });
      this.#resolveDone();
    }
  }

  #armIdleTimer(): void {
    this.#idle();
    if (this.#idleMs <= 0 || (this.#state !== SessionState.Begin && this.#state !== SessionState.Continue)) return;
    this.#idleTimer = setTimeout(() => {
      this.#fail(new TandemError(ErrorCode.Timeout, `nothing from the sender for ${this.#idleMs} ms inside transaction ${this.#expectedId}`));
    }, this.#idleMs);
  }

  #idle(): void {
    if (this.#idleTimer !== undefined) clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
  }

  #step(event: ReceiverEvent): void {
    this.#state = receiverTransition(this.#state, event);
  }

  /** Runs `fn`; any error ends the session and is rethrown. */
  #guard(fn: () => void): void {
    if (this.#error) throw this.#error;
    if (this.#ended) throw new TandemError(ErrorCode.PeerClosed, "the session has ended");
    try {
      fn();
    } catch (error) {
      throw this.#die(error instanceof TandemError ? error : new TandemError(ErrorCode.InvalidState, String(error)));
    }
  }

  /** Runs `fn` from a transport callback: an error ends the session (see `done`), never throws. */
  #quietly(fn: () => void): void {
    try {
      this.#guard(fn);
    } catch {
      // Recorded by #fail; `done` rejects with it.
    }
  }

  #die(error: TandemError): TandemError {
    this.#fail(error);
    return this.#error!;
  }

  #fail(error: TandemError): void {
    if (this.#error || this.#ended) return;
    this.#error = error;
    this.#idle();
    this.#release();
    this.#pending = [];
    this.#pendingBytes = 0;
    this.#trace?.("error", { code: error.code });
    this.#rejectDone(error);
    this.#transport.close();
  }
}

function isThenable(value: unknown): value is PromiseLike<void> {
  return typeof (value as PromiseLike<void> | undefined)?.then === "function";
}

/** The transaction handed to a consumer. */
class Delivered implements ReceivedTransaction {
  constructor(
    readonly id: number,
    readonly atomic: boolean,
    readonly segments: readonly Uint8Array[],
    readonly byteLength: number,
  ) {}

  bytes(): Uint8Array {
    const all = new Uint8Array(this.byteLength);
    let at = 0;
    for (const segment of this.segments) {
      all.set(segment, at);
      at += segment.length;
    }
    return all;
  }
}
