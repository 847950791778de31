/**
 * The byte stream a transaction session runs over, and an in-memory pair of them.
 *
 * Back-pressure has two signals. Ownership bounds memory: a writer hands a chunk to `write` and
 * may not touch it until the transport calls `done`, so a sender that recycles a fixed pool of
 * buffers holds exactly its pool when the transport is slow. And `write` returning false says
 * "wait": the transport is backed up (a socket's queue passed its high-water mark), so a writer
 * should let the event loop run until its writes are done; on Node that is what lets the
 * socket send while the writer produces, instead of all at once when it finally awaits.
 *
 * On the receiving side ownership passes the other way: a chunk given to `onData` is never
 * touched by the transport again. Node, Deno and Bun allocate a fresh buffer for every socket
 * read (checked on all three), so sockets give that for free; the in-memory pair copies.
 */

import { ErrorCode, TandemError } from "../errors.ts";

/** A duplex byte stream. */
export interface Transport {
  /**
   * Queues `chunk` for sending. The transport may read `chunk` until it calls `done` (once, with
   * an error if the bytes could not be sent); the caller must not change it before then.
   * Returns false when the transport is backed up and the writer should wait for `done`.
   */
  write(chunk: Uint8Array, done: (error?: Error) => void): boolean;
  /**
   * Sets the handler for received bytes; bytes that arrived before are given to it at once. A
   * delivered chunk is the handler's to keep: the transport never writes to it again (a receiver
   * keeps chunks as a transaction's payload, uncopied).
   */
  onData(handler: (chunk: Uint8Array) => void): void;
  /** Sets the handler called once when the stream ends: no error for an orderly close. */
  onClose(handler: (error?: Error) => void): void;
  /**
   * Runs `writes`, which calls `write` several times, letting the transport send those chunks
   * together (a socket's writev) rather than one by one, as when a small header precedes a large
   * payload held elsewhere. `writes` returns what its last `write` returned; `batch` returns
   * whether the transport takes more now, judged once the batch has gone out (while a batch is
   * gathered, a socket's `write` says "wait" for bytes the kernel may then take at once).
   */
  batch(writes: () => boolean): boolean;
  /** Ends the stream. Writes not yet done complete with an error. */
  close(): void;
  /** True once the stream has ended, from either side. */
  readonly closed: boolean;
}

/** A transport whose handlers are kept until set and whose close is reported once. */
export abstract class TransportBase implements Transport {
  #data: ((chunk: Uint8Array) => void) | undefined;
  /** Bytes that arrived before a handler was set (Deno can emit data in the same tick as connect). */
  #early: Uint8Array[] = [];
  #close: ((error?: Error) => void) | undefined;
  #closed = false;
  #closeError: Error | undefined;
  #reported = false;

  abstract write(chunk: Uint8Array, done: (error?: Error) => void): boolean;
  abstract close(): void;

  batch(writes: () => boolean): boolean {
    return writes();
  }

  onData(handler: (chunk: Uint8Array) => void): void {
    this.#data = handler;
    for (const chunk of this.#early.splice(0)) handler(chunk);
  }

  onClose(handler: (error?: Error) => void): void {
    this.#close = handler;
    if (this.#closed) this.#report();
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Delivers received bytes to the handler, or keeps them until one is set: none is ever dropped. */
  protected deliver(chunk: Uint8Array): void {
    if (this.#closed) return;
    if (this.#data) this.#data(chunk);
    else this.#early.push(chunk);
  }

  /** Marks the stream ended and tells the close handler (once). */
  protected ended(error?: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeError = error;
    this.#report();
  }

  #report(): void {
    if (this.#reported || !this.#close) return;
    this.#reported = true;
    this.#close(this.#closeError);
  }
}

/** The error a write gets on an ended stream. */
export function closedError(): TandemError {
  return new TandemError(ErrorCode.PeerClosed, "the connection is closed");
}

/** One end of an in-memory pair. */
class MemoryEnd extends TransportBase {
  peer!: MemoryEnd;
  readonly #queue: { chunk: Uint8Array; done: (error?: Error) => void }[] = [];
  #scheduled = false;

  write(chunk: Uint8Array, done: (error?: Error) => void): boolean {
    if (this.closed) {
      queueMicrotask(() => done(closedError()));
      return false;
    }
    this.#queue.push({ chunk, done });
    if (!this.#scheduled) {
      this.#scheduled = true;
      queueMicrotask(() => this.#flush());
    }
    return true; // delivery is a microtask away: never backed up
  }

  close(): void {
    if (this.closed) return;
    // Bytes already written still arrive, as on a socket; then the peer sees the close.
    this.#flush();
    this.ended();
    queueMicrotask(() => this.peer.ended());
  }

  /** Breaks the connection abruptly: nothing more arrives and both ends see `error`. */
  fail(error: Error): void {
    for (const { done } of this.#queue.splice(0)) queueMicrotask(() => done(error));
    this.ended(error);
    queueMicrotask(() => this.peer.ended(error));
  }

  #flush(): void {
    this.#scheduled = false;
    for (const { chunk, done } of this.#queue.splice(0)) {
      if (this.peer.closed) {
        done(closedError());
        continue;
      }
      this.peer.deliver(chunk.slice()); // the writer may reuse `chunk` after done; the reader keeps this
      done();
    }
  }
}

/** An in-memory connection: what one end writes, the other receives, in order, asynchronously. */
export function memoryPair(): [Transport & { fail(error: Error): void }, Transport & { fail(error: Error): void }] {
  const a = new MemoryEnd();
  const b = new MemoryEnd();
  a.peer = b;
  b.peer = a;
  return [a, b];
}
