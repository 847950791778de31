/**
 * A transport wrapper that misbehaves on purpose, for tests: it re-cuts what is written into
 * random pieces, delays them, cuts the connection after a number of bytes, or holds write
 * completions back (a peer that stopped reading). Reads pass through unchanged.
 */

import { seededRandom } from "../prng.ts";
import { TransportBase, closedError, type Transport } from "./transport.ts";

/** What to break. */
export interface FaultOptions {
  /** Seed of the random piece sizes. */
  seed?: number;
  /** Deliver each write in pieces of 1 to `maxChunk` bytes. Default: as written. */
  maxChunk?: number;
  /** Break the connection as soon as this many bytes went through; the rest is lost. */
  cutAfter?: number;
  /** Drop everything after this many bytes but keep the connection open (a hung peer). */
  silentAfter?: number;
  /** Hold each piece back this many ms (order is kept). */
  delayMs?: number;
  /** Hold every write's completion until {@link FaultyTransport.release}. */
  stallWrites?: boolean;
}

/** A transport that injects the faults in {@link FaultOptions}. */
export class FaultyTransport extends TransportBase {
  readonly #inner: Transport;
  readonly #options: FaultOptions;
  readonly #random: () => number;
  readonly #stalled: (() => void)[] = [];
  #sent = 0;
  #chain: Promise<void> = Promise.resolve();
  #stalling: boolean;

  constructor(inner: Transport, options: FaultOptions = {}) {
    super();
    this.#inner = inner;
    this.#options = options;
    this.#random = seededRandom(options.seed ?? 1);
    this.#stalling = options.stallWrites ?? false;
    inner.onData((chunk) => this.deliver(chunk));
    inner.onClose((error) => this.ended(error));
  }

  /** Bytes that went through so far. */
  get sent(): number {
    return this.#sent;
  }

  write(chunk: Uint8Array, done: (error?: Error) => void): boolean {
    if (this.closed) {
      queueMicrotask(() => done(closedError()));
      return false;
    }
    // Copy: pieces may go out after `done`, and the caller reuses its buffer after `done`.
    const bytes = chunk.slice();
    const pieces: Uint8Array[] = [];
    for (let at = 0; at < bytes.length; ) {
      const size = this.#options.maxChunk ? 1 + Math.floor(this.#random() * this.#options.maxChunk) : bytes.length;
      pieces.push(bytes.subarray(at, at + size));
      at += size;
    }
    const finish = (error?: Error) => {
      if (this.#stalling && !error) this.#stalled.push(() => done());
      else done(error);
    };
    this.#chain = this.#chain.then(async () => {
      for (const piece of pieces) {
        if (this.#options.delayMs) await new Promise((r) => setTimeout(r, this.#options.delayMs));
        if (this.closed) return finish(closedError());
        const cut = this.#options.cutAfter;
        if (cut !== undefined && this.#sent + piece.length >= cut) {
          const last = piece.subarray(0, cut - this.#sent);
          this.#sent = cut;
          if (last.length > 0) this.#inner.write(last, () => {});
          this.#break();
          return finish(closedError());
        }
        const silent = this.#options.silentAfter;
        if (silent !== undefined && this.#sent + piece.length > silent) {
          const last = piece.subarray(0, Math.max(0, silent - this.#sent));
          this.#sent = Math.max(this.#sent, silent);
          if (last.length > 0) this.#inner.write(last, () => {});
          continue; // the rest vanishes; the writer is told it went out
        }
        this.#sent += piece.length;
        await new Promise<void>((resolve) => this.#inner.write(piece, () => resolve()));
      }
      finish();
    });
    return !this.#stalling; // a stalled peer is the backed-up transport, by definition
  }

  /** Lets held write completions through, and stops holding them. */
  release(): void {
    this.#stalling = false;
    for (const done of this.#stalled.splice(0)) done();
  }

  close(): void {
    this.#inner.close();
  }

  #break(): void {
    // Let the last piece reach the peer, then drop the connection as a crash would.
    queueMicrotask(() => this.#inner.close());
  }
}
