/** Builds sender/receiver pairs over an in-memory connection, with faults, for the protocol tests. */

import { ErrorCode, TandemError } from "../../host/errors.ts";
import { FaultyTransport, type FaultOptions } from "../../host/protocol/faulty-transport.ts";
import { TransactionReceiver, type ReceivedTransaction, type ReceiverOptions } from "../../host/protocol/receiver.ts";
import { TransactionSender, type SenderOptions } from "../../host/protocol/sender.ts";
import { TransportBase, memoryPair, type Transport } from "../../host/protocol/transport.ts";

/** A transaction as the consumer saw it (copied: views die when the consumer returns). */
export interface Seen {
  id: number;
  atomic: boolean;
  bytes: Uint8Array;
}

export interface Session {
  sender: TransactionSender;
  receiver: TransactionReceiver;
  /** The sender's end, wrapped in the fault injector. */
  wire: FaultyTransport;
  /** The receiver's end, for writing raw bytes at it. */
  receiverEnd: Transport;
  seen: Seen[];
}

export interface SessionOptions {
  sender?: SenderOptions;
  receiver?: ReceiverOptions;
  faults?: FaultOptions;
  /** Consumer behaviour beyond recording: throw to refuse. */
  consume?: (transaction: ReceivedTransaction) => void | Promise<void>;
  /** Open the session (receiver ACK, sender waits). Default true. */
  open?: boolean;
  /**
   * Called after each chunk has reached the receiver, so a test can act at an exact point of
   * the stream (the receiver's state is then what that chunk left it in).
   */
  afterChunk?: (receiver: TransactionReceiver) => void;
}

/** The receiver's end, passing everything through and calling `after` once each chunk is handled. */
class Tapped extends TransportBase {
  readonly #inner: Transport;

  constructor(inner: Transport, after: () => void) {
    super();
    this.#inner = inner;
    inner.onData((chunk) => {
      this.deliver(chunk);
      after();
    });
    inner.onClose((error) => this.ended(error));
  }

  write(chunk: Uint8Array, done: (error?: Error) => void): boolean {
    return this.#inner.write(chunk, done);
  }

  close(): void {
    this.#inner.close();
  }
}

export async function session(options: SessionOptions = {}): Promise<Session> {
  const [a, b] = memoryPair();
  const wire = new FaultyTransport(a, options.faults);
  const seen: Seen[] = [];
  const tap = options.afterChunk;
  const receiverSide = tap ? new Tapped(b, () => tap(receiver)) : b;
  const receiver: TransactionReceiver = new TransactionReceiver(receiverSide, async (t) => {
    seen.push({ id: t.id, atomic: t.atomic, bytes: t.bytes() });
    await options.consume?.(t);
  }, options.receiver);
  const sender = new TransactionSender(wire, options.sender);
  if (options.open ?? true) {
    receiver.open();
    await sender.open();
  }
  return { sender, receiver, wire, receiverEnd: b, seen };
}

/** The code of the TandemError a promise rejects with (undefined if it resolves). */
export async function rejectionCode(promise: Promise<unknown>): Promise<string | undefined> {
  try {
    await promise;
  } catch (error) {
    return error instanceof TandemError ? error.code : `not a TandemError: ${String(error)}`;
  }
  return undefined;
}

/** Bytes 0..n-1 of a seeded pattern. */
export function pattern(n: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = x & 0xff;
  }
  return bytes;
}

/** Error codes that may end a session whose stream was cut or corrupted. */
export const STREAM_ERRORS: readonly string[] = [
  ErrorCode.RecvHeader, ErrorCode.RecvPayload, ErrorCode.PeerClosed, ErrorCode.IdMismatch, ErrorCode.SeqMismatch,
  ErrorCode.InvalidState, ErrorCode.PayloadTooLarge,
];

/** Waits until `check` holds (polling a few ms apart), failing after `ms`. */
export async function until(check: () => boolean, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error("condition not reached in time");
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** `promise`, or a failure naming `what` after `ms`: a test waits on nothing without a bound. */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not done within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}
