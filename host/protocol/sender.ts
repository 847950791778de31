/**
 * The sending side of a transaction session (seed 000's ft_trans_file, as a sender).
 *
 *   await sender.open();                 // waits for the receiver's opening ACK
 *   await sender.begin();
 *   await sender.write(bytes);           // CONTINUE frames, as many as needed
 *   await sender.writeNoCopy(bytes);     // the same, sent from the caller's bytes (see there)
 *   await sender.commit();               // resolves on ACK; E_REFUSED on NACK; E_CANCELLED
 *   await sender.atomic(bytes);          // a whole transaction in one frame
 *
 * With `window: W` (W > 1) transactions are pipelined: the next begin() or atomic() may be
 * called without awaiting the last commit, so one transaction's round trip overlaps the next
 * one's bytes. Each commit() (or atomic()) still settles at its own answer; begin() waits while
 * W of them are unanswered. Answers come in order (the receiver applies transactions strictly in
 * order), each transaction is answered on its own: a NACK or a receiver's CANCEL rejects only
 * that transaction's commit, and later ones go on.
 *
 *   const commits: Promise<void>[] = [];
 *   for (const t of transactions) {
 *     if (commits.length === W) await commits.shift();
 *     await sender.begin();
 *     await sender.writeNoCopy(t);
 *     commits.push(sender.commit());      // not awaited yet: the next transaction starts now
 *   }
 *   await Promise.all(commits);
 *
 * Frames are encoded by the frame kernel into a fixed pool of buffers in a heap of the sender's
 * own. A full buffer goes to the transport and comes back to the pool when the transport is done
 * with it; when none is free the sender is frozen and calls wait. So the memory a slow transport
 * makes the sender hold is exactly the pool, reported in {@link SenderStats}. COMMIT goes out
 * after everything before it and resolves only once every buffer is written and the receiver has
 * answered.
 *
 * Calls are made one at a time (await each), except that with a window the commits (and
 * atomics) awaiting their answers may be left outstanding. After an error the session is dead:
 * every outstanding commit and every later call fails with that error; a NACK or a cancel ends
 * only the transaction.
 */

import { ErrorCode, TandemError } from "../errors.ts";
import { tracerFor, type Tracer } from "../trace.ts";
import { Heap } from "../wasm/heap.ts";
import { kernelsFor, type KernelFlavor, type Kernels } from "../wasm/kernels.ts";
import { CMD_NAMES, ChunkFrameDecoder, Cmd, HEADER_SIZE, type ChunkSink } from "./frame.ts";
import { SessionState, senderTransition, type SenderEvent } from "./session-state.ts";
import type { Transport } from "./transport.ts";

/** Options of a {@link TransactionSender}. */
export interface SenderOptions {
  /** Bytes per output buffer; also the largest ATOMIC frame. Default 256 KiB. */
  bufferSize?: number;
  /**
   * Largest payload of one CONTINUE frame sent by {@link TransactionSender.writeNoCopy}, whose
   * payloads do not go through the pool; at most the receiver's `maxFramePayload`. Default 1 MiB,
   * the receiver's default. (Frames built in the pool are bounded by `bufferSize` too.)
   */
  maxFramePayload?: number;
  /** Buffers in the pool; the pool is all the memory a slow transport makes the sender hold. Default 4. */
  buffers?: number;
  /** How long to wait for the opening ACK and for each transaction's answer. Default 30 s. */
  responseTimeoutMs?: number;
  /** Which frame kernels to run; default: see {@link defaultFlavor}. */
  kernels?: KernelFlavor;
  /**
   * The most transactions committed but not yet answered. 1 (the default) is stop-and-wait, as
   * in seed 000: commit() and atomic() hold the sender until the answer, and any call before
   * then is E_INVALID_STATE. With more, their promises settle at the answer as before, but
   * begin() and atomic() may be called at once; they wait while `window` are unanswered. The
   * receiver then holds up to `window` transactions: see docs/protocol.md, "Pipelining".
   */
  window?: number;
}

/** What a sender has done, and what it holds. */
export interface SenderStats {
  /** Transactions answered: acknowledged, refused (NACK) or cancelled by the receiver. */
  acked: number;
  refused: number;
  cancelled: number;
  /** Frames and frame bytes handed to the transport. */
  frames: number;
  bytes: number;
  /** True while every buffer is with the transport and calls wait. */
  frozen: boolean;
  /** How many times the sender froze. */
  freezes: number;
  /** Bytes encoded but not yet released by the transport. */
  heldBytes: number;
  /** The bound on {@link heldBytes}: the pool's size. */
  heldLimit: number;
  /** The most bytes held at once. */
  peakHeldBytes: number;
  /** Transactions committed (or sent ATOMIC) whose answer has not come yet; at most the window. */
  unanswered: number;
  /** The most unanswered at once. */
  peakUnanswered: number;
}

const DONE: Promise<void> = Promise.resolve();

/** The error of a call made while another is still in progress. */
function overlappingCall(): TandemError {
  return new TandemError(ErrorCode.InvalidState, "a call was made before the previous one finished; await each call");
}

/** A transaction, from its BEGIN (or ATOMIC) on. */
interface Txn {
  readonly id: number;
  /** Its writes (pool buffers, writeNoCopy payloads) the transport has not finished. */
  writes: number;
}

/** Something awaited from the receiver, with a timeout: the opening ACK, or an answer. */
class Awaited {
  readonly promise: Promise<void>;
  /** When the session stops waiting for it (performance.now() time). */
  readonly deadline: number;
  #resolve!: () => void;
  #reject!: (error: TandemError) => void;

  constructor(timeoutMs: number) {
    this.promise = new Promise<void>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.promise.catch(() => {}); // if the writes fail first, their error is the one reported
    this.deadline = performance.now() + timeoutMs;
  }

  /** Resolves (no outcome) or rejects the promise. */
  settle(outcome: TandemError | undefined): void {
    if (outcome) this.#reject(outcome);
    else this.#resolve();
  }
}

/** A committed transaction awaiting its answer. */
class Answer extends Awaited {
  constructor(timeoutMs: number, readonly txn: Txn) {
    super(timeoutMs);
  }
}

/** The sending side of a transaction session. */
export class TransactionSender {
  readonly #transport: Transport;
  readonly #heap: Heap;
  readonly #kernels: Kernels;
  /** Decodes the receiver's answers straight out of the chunks the transport delivers. */
  readonly #decoder = new ChunkFrameDecoder(0);
  readonly #trace: Tracer | undefined;
  readonly #bufferSize: number;
  readonly #maxFrame: number;
  readonly #timeoutMs: number;
  readonly #window: number;
  readonly #free: number[] = [];
  readonly #waiters: (() => void)[] = [];
  #current: { ptr: number; used: number } | undefined;
  #inFlight = 0;
  #inFlightBytes = 0;
  #backedUp = false;
  /** The state of the latest transaction; the unanswered ones before it are in #unanswered. */
  #state: SessionState = SessionState.Init;
  #nextId = 0;
  /** The latest transaction: the one whose frames are being encoded, and the pool's only user. */
  #latest: Txn = { id: 0, writes: 0 };
  #seq = 0;
  /** Committed transactions awaiting their answers, oldest first (the receiver answers in order). */
  readonly #unanswered: Answer[] = [];
  #opening: Awaited | undefined;
  /** The one timer behind every wait for the receiver, due at the oldest wait's deadline. */
  #deadlineTimer: ReturnType<typeof setTimeout> | undefined;
  /** The sending part of a pipelined commit() or atomic() in progress; the next begin() waits for it. */
  #sending: Promise<void> | undefined;
  #cancelledByPeer = false;
  /** The transaction this side cancelled last: a CANCEL of it from the receiver crossed ours. */
  #cancelledHere: number | undefined;
  #openedEarly = false;
  #busy = false;
  #error: TandemError | undefined;
  readonly #stats: SenderStats;
  /** Where the decoder reports the receiver's frames. */
  readonly #answers: ChunkSink = {
    header: (cmd, id, seq) => this.#answered(cmd, id, seq),
    payload: () => {}, // maxPayload 0: the decoder refuses any payload before we get here
  };

  constructor(transport: Transport, options: SenderOptions = {}) {
    const bufferSize = options.bufferSize ?? 256 * 1024;
    const buffers = options.buffers ?? 4;
    const window = options.window ?? 1;
    const maxFrame = options.maxFramePayload ?? 1 << 20;
    if (!Number.isInteger(bufferSize) || bufferSize < HEADER_SIZE + 1 || !Number.isInteger(buffers) || buffers < 1) {
      throw new TandemError(ErrorCode.BadArgument, `bufferSize ${bufferSize} and buffers ${buffers}: need at least ${HEADER_SIZE + 1} bytes and 1 buffer`);
    }
    if (!Number.isInteger(maxFrame) || maxFrame < 1 || maxFrame > 0xffffffff) {
      throw new TandemError(ErrorCode.BadArgument, `maxFramePayload ${maxFrame}: expected an integer from 1 to 2^32 - 1`);
    }
    // Ids are 16 bits: the unanswered ones must stay distinct, with room to tell them apart.
    if (!Number.isInteger(window) || window < 1 || window > 1024) {
      throw new TandemError(ErrorCode.BadArgument, `window ${window}: expected an integer from 1 to 1024`);
    }
    this.#window = window;
    this.#transport = transport;
    this.#bufferSize = bufferSize;
    this.#maxFrame = maxFrame;
    this.#timeoutMs = options.responseTimeoutMs ?? 30_000;
    // Everything is allocated now and the memory never grows: views handed to the transport stay valid.
    this.#heap = Heap.create(buffers * bufferSize + buffers * 64);
    this.#kernels = kernelsFor(this.#heap, options.kernels);
    for (let i = 0; i < buffers; i++) this.#free.push(this.#heap.alloc(bufferSize));
    this.#trace = tracerFor("protocol");
    this.#stats = {
      acked: 0, refused: 0, cancelled: 0, frames: 0, bytes: 0, frozen: false, freezes: 0,
      heldBytes: 0, heldLimit: buffers * bufferSize, peakHeldBytes: 0, unanswered: 0, peakUnanswered: 0,
    };
    transport.onData((chunk) => this.#received(chunk));
    transport.onClose((error) => this.#fail(new TandemError(ErrorCode.PeerClosed, `the receiver's connection closed${error ? `: ${error.message}` : ""}`)));
  }

  /**
   * The session state (see session-state.ts): that of the latest transaction. With a window,
   * earlier ones may still await their answers ({@link SenderStats.unanswered}).
   */
  get state(): SessionState {
    return this.#state;
  }

  /** The id the next begin() or atomic() will use. */
  get nextId(): number {
    return this.#nextId;
  }

  /** A snapshot of the counters. */
  get stats(): SenderStats {
    return { ...this.#stats, heldBytes: this.#held(), unanswered: this.#unanswered.length };
  }

  /** The error that ended the session, if one did. */
  get error(): TandemError | undefined {
    return this.#error;
  }

  /** Waits for the receiver's opening ACK (resolving at once if it already came). */
  open(): Promise<void> {
    return this.#op(async () => {
      if (this.#openedEarly) {
        this.#openedEarly = false;
        return;
      }
      if (this.#state !== SessionState.Init) throw new TandemError(ErrorCode.InvalidState, `open() in state ${this.#state}`);
      this.#opening = this.#awaiting(new Awaited(this.#timeoutMs));
      await this.#opening.promise;
    });
  }

  /**
   * Starts a transaction (BEGIN). With a window, it may be called before the last commit()
   * settled; it waits while the window is full.
   */
  begin(): Promise<void> {
    // The common case (room in the window and in the pool) runs at once, with no async frames.
    if (this.#callableNow() && !this.#windowFull()) {
      const buffer = this.#headerRoomNow();
      if (buffer) {
        try {
          this.#start("begin");
          this.#encode(buffer, Cmd.Begin, 0);
          return DONE;
        } catch (error) {
          return Promise.reject(this.#outcome(error));
        }
      }
    }
    return this.#afterSending(() => this.#op(async () => {
      if (this.#windowFull()) await this.#roomInWindow("begin");
      this.#start("begin");
      await this.#control(Cmd.Begin);
    }));
  }

  /**
   * Adds bytes to the open transaction, in as many CONTINUE frames as the buffers need. The bytes
   * are copied before the promise settles; it settles at once unless the sender is frozen.
   */
  write(bytes: Uint8Array): Promise<void> {
    // The hot path of a checkpoint (one call per page): no async frames unless the sender must wait.
    if (this.#error) return Promise.reject(this.#error);
    if (this.#busy) return Promise.reject(this.#die(overlappingCall()));
    try {
      this.#takePeerCancel();
      this.#step("write");
      const offset = this.#backedUp ? 0 : this.#append(bytes, 0);
      if (offset === bytes.length) return DONE;
      return this.#op(async () => {
        await this.#drained();
        for (let at = offset; at < bytes.length; ) {
          await this.#room(HEADER_SIZE + 1);
          at = this.#append(bytes, at);
        }
        this.#takePeerCancel();
      });
    } catch (error) {
      return Promise.reject(this.#outcome(error));
    }
  }

  /**
   * Adds bytes to the open transaction like {@link write}, but sends them from the caller's own
   * memory instead of copying them into the pool: the pool holds only each frame's header. The
   * sender keeps a reference until the transaction's commit (or cancel) settles, so the caller
   * must not change the bytes before then. For large writes of bytes that are not reused, such as
   * a whole encoded checkpoint, where the copy would cost as much as the socket.
   */
  writeNoCopy(bytes: Uint8Array): Promise<void> {
    // As write(): settles at once unless the transport is backed up or the pool is all in flight.
    if (this.#error) return Promise.reject(this.#error);
    if (this.#busy) return Promise.reject(this.#die(overlappingCall()));
    try {
      this.#takePeerCancel();
      this.#step("write");
      const offset = this.#appendNoCopy(bytes, 0);
      if (offset === bytes.length) return DONE;
      return this.#op(async () => {
        for (let at = offset; at < bytes.length; ) {
          await this.#drained();
          await this.#room(HEADER_SIZE);
          at = this.#appendNoCopy(bytes, at);
        }
        this.#takePeerCancel();
      });
    } catch (error) {
      return Promise.reject(this.#outcome(error));
    }
  }

  /**
   * Sends bytes[offset..] as CONTINUE frames, each header from the pool and its payload from
   * `bytes`, while the transport takes more and a header has room; returns how far it got.
   */
  #appendNoCopy(bytes: Uint8Array, offset: number): number {
    while (offset < bytes.length && !this.#backedUp) {
      const header = this.#roomNow(HEADER_SIZE);
      if (!header) break;
      // One frame per maxFramePayload, not per pool buffer: a 256 KiB write is one header and
      // one payload on the socket, not a full frame and a 12-byte straggler with a header of its own.
      const n = Math.min(bytes.length - offset, this.#maxFrame);
      const payload = n === bytes.length ? bytes : bytes.subarray(offset, offset + n);
      this.#encode(header, Cmd.Continue, n, false);
      const more = this.#transport.batch(() => {
        this.#flush();
        return this.#send(payload, ErrorCode.SendPayload, () => {});
      });
      this.#backedUp = !more;
      offset += n;
    }
    return offset;
  }

  /** Encodes bytes[offset..] as CONTINUE frames while buffers are free; returns how far it got. */
  #append(bytes: Uint8Array, offset: number): number {
    while (offset < bytes.length) {
      const buffer = this.#roomNow(HEADER_SIZE + 1);
      if (!buffer) break;
      const n = Math.min(bytes.length - offset, this.#bufferSize - buffer.used - HEADER_SIZE, this.#maxFrame);
      const part = n === bytes.length ? bytes : bytes.subarray(offset, offset + n);
      this.#heap.u8.set(part, buffer.ptr + buffer.used + HEADER_SIZE);
      this.#encode(buffer, Cmd.Continue, n);
      offset += n;
      if (buffer.used === this.#bufferSize) this.#flush();
    }
    return offset;
  }

  /**
   * Ends the transaction (COMMIT) and waits for the receiver's answer: resolves on ACK, rejects
   * with E_REFUSED on NACK and E_CANCELLED if the receiver cancelled it. With a window, the next
   * begin() may be called before this settles.
   */
  commit(): Promise<void> {
    // As begin(): with room in the pool, COMMIT goes out at once and only the answer is awaited.
    const buffer = this.#callableNow() ? this.#headerRoomNow() : undefined;
    if (buffer) {
      let answer: Answer;
      try {
        this.#takePeerCancel();
        this.#step("commit");
        answer = this.#expectAnswer();
        this.#encode(buffer, Cmd.Commit, 0);
        this.#flush();
      } catch (error) {
        return Promise.reject(this.#outcome(error));
      }
      if (this.#window === 1) return this.#op(() => this.#settled(answer));
      return this.#settled(answer).catch((error: unknown) => {
        throw this.#outcome(error);
      });
    }
    return this.#committed(false, async () => {
      this.#takePeerCancel();
      this.#step("commit");
      const answer = this.#expectAnswer(); // before any await: the answer may come at any moment now
      await this.#control(Cmd.Commit);
      this.#flush();
      return answer;
    });
  }

  /**
   * Sends a whole transaction in one ATOMIC frame and waits for the answer, as {@link commit}.
   * With a window, it may be called before the last commit() or atomic() settled.
   */
  atomic(bytes: Uint8Array): Promise<void> {
    return this.#committed(true, async () => {
      if (HEADER_SIZE + bytes.length > this.#bufferSize) {
        throw new TandemError(ErrorCode.PayloadTooLarge, `an ATOMIC payload of ${bytes.length} bytes does not fit one ${this.#bufferSize}-byte buffer; use begin/write/commit`);
      }
      if (this.#windowFull()) await this.#roomInWindow("atomic");
      this.#start("atomic");
      const answer = this.#expectAnswer();
      const buffer = await this.#room(HEADER_SIZE + bytes.length);
      this.#heap.u8.set(bytes, buffer.ptr + buffer.used + HEADER_SIZE);
      this.#encode(buffer, Cmd.Atomic, bytes.length);
      this.#flush();
      return answer;
    });
  }

  /** Abandons the open transaction (CANCEL); the receiver drops what it buffered. */
  cancel(): Promise<void> {
    return this.#op(async () => {
      if (this.#cancelledByPeer) {
        this.#cancelledByPeer = false; // the receiver cancelled it first: nothing to send
        return;
      }
      this.#step("cancel");
      this.#cancelledHere = this.#latest.id;
      const txn = this.#latest;
      await this.#control(Cmd.Cancel);
      this.#flush();
      await this.#written(txn); // its writeNoCopy() bytes are the caller's again once this returns
    });
  }

  /** Ends the session and closes the transport. */
  close(): void {
    this.#fail(new TandemError(ErrorCode.InvalidState, "the sender was closed"));
  }

  // --- the window ----------------------------------------------------------------------------

  /**
   * Runs the sending part of commit() or atomic() (`send`, which returns the answer it awaits)
   * as a call, then waits for the transaction's writes and answer. With a window of one that
   * wait is part of the call: stop-and-wait, and any call before the answer is E_INVALID_STATE.
   * With a larger one it is not, so the next begin() or atomic() may be called at once; it waits
   * for this sending part (#afterSending) and for room in the window (#roomInWindow). `next`
   * says whether this call itself starts a transaction (atomic), and so waits for an earlier
   * sending part first.
   */
  #committed(next: boolean, send: () => Promise<Answer>): Promise<void> {
    if (this.#window === 1) return this.#op(async () => this.#settled(await send()));
    const sent = next ? this.#afterSending(() => this.#op(send)) : this.#op(send);
    const sending: Promise<void> = sent.then(() => {}, () => {});
    this.#sending = sending;
    void sending.then(() => {
      if (this.#sending === sending) this.#sending = undefined;
    });
    return sent.then((answer) => this.#settled(answer)).catch((error: unknown) => {
      throw this.#outcome(error);
    });
  }

  /** Runs `call` after the sending part of a pipelined commit() or atomic() made just before it. */
  #afterSending<T>(call: () => Promise<T>): Promise<T> {
    const previous = this.#sending;
    return previous ? previous.then(call) : call();
  }

  /**
   * True when a call may run synchronously: the session is alive, no call is in progress and no
   * pipelined commit() or atomic() is still sending. Otherwise the call takes its async path,
   * which waits its turn or reports the error.
   */
  #callableNow(): boolean {
    return this.#error === undefined && !this.#busy && this.#sending === undefined;
  }

  /** A buffer with room for a header, if one is free now (no waiting). */
  #headerRoomNow(): { ptr: number; used: number } | undefined {
    const buffer = this.#roomNow(HEADER_SIZE);
    if (buffer) this.#thaw();
    return buffer;
  }

  /** True while `window` transactions are unanswered: the next one must wait. */
  #windowFull(): boolean {
    return this.#unanswered.length >= this.#window;
  }

  /**
   * Waits until fewer than `window` transactions are unanswered, before `event` (begin or
   * atomic). A call the state machine refuses fails at once, not after the wait.
   */
  async #roomInWindow(event: "begin" | "atomic"): Promise<void> {
    senderTransition(this.#state, event);
    this.#trace?.("window_full", { unanswered: this.#unanswered.length });
    while (this.#windowFull()) {
      await new Promise<void>((wake) => this.#waiters.push(wake));
      this.#throwIfDead();
    }
  }

  /**
   * Starts the next transaction (`event` is begin or atomic). Synchronous with what follows up
   * to the answer's registration, so a session that dies meanwhile cannot leave an answer that
   * nothing will settle.
   */
  #start(event: "begin" | "atomic"): void {
    this.#throwIfDead(); // it may have died while the caller waited
    this.#step(event);
    this.#latest = { id: this.#nextId, writes: 0 };
    this.#nextId = (this.#nextId + 1) & 0xffff;
    this.#seq = 0;
  }

  /**
   * Settles with `answer`'s transaction: once the answer has come and every write of the
   * transaction is done (they nearly always are by then: the answer follows the COMMIT).
   */
  #settled(answer: Answer): Promise<void> {
    const txn = answer.txn;
    return answer.promise.then(() => (txn.writes > 0 ? this.#written(txn) : undefined));
  }

  /** Waits until the transport has finished every write of `txn`. */
  async #written(txn: Txn): Promise<void> {
    while (txn.writes > 0) {
      await new Promise<void>((wake) => this.#waiters.push(wake));
      this.#throwIfDead();
    }
  }

  // --- sending -------------------------------------------------------------------------------

  async #control(cmd: number): Promise<void> {
    this.#encode(await this.#room(HEADER_SIZE), cmd, 0);
  }

  /**
   * Encodes a frame at the end of `buffer`. Its `len` payload bytes are already in place after the
   * header, or, when `payloadInBuffer` is false, follow in a transport write of their own.
   */
  #encode(buffer: { ptr: number; used: number }, cmd: number, len: number, payloadInBuffer = true): void {
    const id = this.#latest.id;
    this.#trace?.("send_header", { cmd: CMD_NAMES[cmd], id, seq: this.#seq, len });
    const at = buffer.ptr + buffer.used;
    // Told that the payload is in place after the header, the kernel writes just the header.
    const size = this.#kernels.frameEncode(at, cmd, id, this.#seq, at + HEADER_SIZE, len);
    buffer.used += payloadInBuffer ? size : HEADER_SIZE;
    this.#seq = (this.#seq + 1) >>> 0;
    this.#stats.frames++;
    this.#stats.bytes += size;
    const held = this.#held();
    if (held > this.#stats.peakHeldBytes) this.#stats.peakHeldBytes = held;
  }

  /** A buffer with at least `need` free bytes, waiting (frozen) while none is free. */
  async #room(need: number): Promise<{ ptr: number; used: number }> {
    let buffer = this.#roomNow(need);
    while (!buffer) {
      await this.#frozen();
      buffer = this.#roomNow(need);
    }
    this.#thaw();
    return buffer;
  }

  /** Waits, frozen, for the transport to finish a write (seed 000's freeze_output). */
  async #frozen(): Promise<void> {
    if (!this.#stats.frozen) {
      this.#stats.frozen = true;
      this.#stats.freezes++;
      this.#trace?.("freeze_output", { held: this.#held() });
    }
    await new Promise<void>((wake) => this.#waiters.push(wake));
    this.#throwIfDead();
  }

  #thaw(): void {
    if (!this.#stats.frozen) return;
    this.#stats.frozen = false;
    this.#trace?.("unfreeze_output", { held: this.#held() });
  }

  /** The current buffer if it has `need` free bytes, else a fresh one after a flush, else none. */
  #roomNow(need: number): { ptr: number; used: number } | undefined {
    if (this.#current && this.#bufferSize - this.#current.used >= need) return this.#current;
    this.#flush();
    const ptr = this.#free.pop();
    if (ptr === undefined) return undefined;
    this.#current = { ptr, used: 0 };
    return this.#current;
  }

  /** Hands the current buffer to the transport; it returns to the pool when written. */
  #flush(): void {
    const buffer = this.#current;
    this.#current = undefined;
    if (!buffer) return;
    if (buffer.used === 0) {
      this.#free.push(buffer.ptr);
      return;
    }
    this.#inFlightBytes += buffer.used;
    this.#trace?.("flush", { bytes: buffer.used, inflight: this.#inFlight + 1 });
    this.#send(this.#heap.u8.subarray(buffer.ptr, buffer.ptr + buffer.used), ErrorCode.Flush, () => {
      this.#inFlightBytes -= buffer.used;
      this.#free.push(buffer.ptr);
    });
  }

  /**
   * Hands `bytes` to the transport, counted in flight until it is done with them (then `release`);
   * a failed write ends the session with `code`. The bytes are the latest transaction's: commit,
   * cancel and atomic flush the pool before the next transaction begins. Returns what the
   * transport's write returned: false when it is backed up.
   */
  #send(bytes: Uint8Array, code: ErrorCode, release: () => void): boolean {
    const txn = this.#latest;
    txn.writes++;
    this.#inFlight++;
    const more = this.#transport.write(bytes, (error) => {
      txn.writes--;
      this.#inFlight--;
      release();
      if (this.#inFlight === 0) this.#backedUp = false;
      if (error) this.#fail(new TandemError(code, `the transport could not send ${bytes.length} bytes: ${error.message}`));
      for (const wake of this.#waiters.splice(0)) wake();
    });
    if (!more) this.#backedUp = true;
    return more;
  }

  /** Waits, frozen, while the transport says it is backed up (lets the event loop move the bytes). */
  async #drained(): Promise<void> {
    while (this.#backedUp) await this.#frozen();
    this.#thaw();
  }

  /**
   * Queues the latest transaction for its answer (ACK, NACK or CANCEL). Called at the transition
   * that makes an answer possible, before anything is awaited, so an early answer is never missed.
   * Each transaction's timeout runs from here, so it covers the ones queued before it too.
   */
  #expectAnswer(): Answer {
    this.#throwIfDead(); // #fail settles only the answers queued before it: one queued after would hang
    const answer = this.#awaiting(new Answer(this.#timeoutMs, this.#latest));
    this.#unanswered.push(answer);
    if (this.#unanswered.length > this.#stats.peakUnanswered) this.#stats.peakUnanswered = this.#unanswered.length;
    return answer;
  }

  /**
   * Starts waiting for `awaited` from the receiver, ending the session with E_TIMEOUT if it does
   * not come in time. Waits are answered in order, so one timer serves them all: it is due at the
   * oldest one's deadline, and a transaction costs no timer of its own.
   */
  #awaiting<T extends Awaited>(awaited: T): T {
    if (this.#deadlineTimer === undefined) this.#deadlineTimer = setTimeout(this.#checkDeadline, this.#timeoutMs);
    return awaited;
  }

  /** The deadline timer: fails the session if the oldest wait is overdue, else waits for it. */
  readonly #checkDeadline = (): void => {
    this.#deadlineTimer = undefined;
    const answer = this.#unanswered[0];
    const oldest = this.#opening ?? answer;
    if (oldest === undefined || this.#error) return;
    const left = oldest.deadline - performance.now();
    if (left > 0) {
      this.#deadlineTimer = setTimeout(this.#checkDeadline, left); // the one it was due for was answered
      return;
    }
    const what = oldest === answer ? `answer to transaction ${answer.txn.id}` : "opening ACK";
    this.#fail(new TandemError(ErrorCode.Timeout, `no ${what} from the receiver within ${this.#timeoutMs} ms`));
  };

  /** Stops the deadline timer when nothing is awaited: an idle session keeps no timer alive. */
  #stopDeadlineIfIdle(): void {
    if (this.#deadlineTimer === undefined || this.#opening || this.#unanswered.length > 0) return;
    clearTimeout(this.#deadlineTimer);
    this.#deadlineTimer = undefined;
  }

  // --- receiving answers ---------------------------------------------------------------------

  #received(chunk: Uint8Array): void {
    if (this.#error) return;
    try {
      this.#decoder.decode(chunk, 0, 0, this.#answers);
    } catch (error) {
      this.#fail(error instanceof TandemError ? error : new TandemError(ErrorCode.RecvHeader, String(error)));
    }
  }

  #answered(cmd: number, id: number, seq: number): void {
    this.#trace?.("recv_header", { cmd: CMD_NAMES[cmd] ?? cmd, id, seq });
    if (cmd === Cmd.Ack && this.#state === SessionState.Init) {
      if (id !== 0) throw new TandemError(ErrorCode.IdMismatch, `the opening ACK names transaction ${id}, expected 0`);
      this.#step("recv-ack");
      // A fast receiver's ACK can come before open() is even called: open() then just returns.
      const opening = this.#opening;
      this.#opening = undefined;
      this.#stopDeadlineIfIdle();
      if (opening) opening.settle(undefined);
      else this.#openedEarly = true;
      return;
    }
    if (cmd !== Cmd.Ack && cmd !== Cmd.Nack && cmd !== Cmd.Cancel) {
      throw new TandemError(ErrorCode.InvalidState, `a receiver never sends ${CMD_NAMES[cmd] ?? `command ${cmd}`}`);
    }
    if (cmd === Cmd.Cancel && id === this.#cancelledHere) {
      this.#cancelledHere = undefined; // crossed our own CANCEL
      return;
    }
    const oldest = this.#unanswered[0];
    if (oldest === undefined) {
      // Nothing committed awaits an answer: only the receiver's CANCEL of the open transaction may come.
      if (id !== this.#latest.id) throw new TandemError(ErrorCode.IdMismatch, `an answer for transaction ${id} while ${this.#latest.id} is open`);
      this.#step(cmd === Cmd.Ack ? "recv-ack" : cmd === Cmd.Nack ? "recv-nack" : "recv-cancel");
      this.#cancelledByPeer = true;
      this.#stats.cancelled++;
      return;
    }
    const expected = oldest.txn.id;
    if (id !== expected) {
      throw new TandemError(ErrorCode.IdMismatch, `an answer for transaction ${id}, but the oldest awaiting one is ${expected} (answers come in order)`);
    }
    this.#unanswered.shift();
    this.#stopDeadlineIfIdle();
    this.#cancelledHere = undefined; // a crossing CANCEL comes before any later answer, or never
    // Only the answer to the latest transaction moves the state machine; earlier ones are pipelined.
    const latest = this.#unanswered.length === 0 && (this.#state === SessionState.Commit || this.#state === SessionState.Atomic);
    this.#step(!latest ? "recv-earlier" : cmd === Cmd.Ack ? "recv-ack" : cmd === Cmd.Nack ? "recv-nack" : "recv-cancel");
    if (cmd === Cmd.Ack) {
      this.#stats.acked++;
      oldest.settle(undefined);
    } else if (cmd === Cmd.Nack) {
      this.#stats.refused++;
      oldest.settle(new TandemError(ErrorCode.Refused, `the receiver refused transaction ${id} (NACK)`));
    } else {
      this.#stats.cancelled++;
      oldest.settle(new TandemError(ErrorCode.Cancelled, `the receiver cancelled transaction ${id}`));
    }
    for (const wake of this.#waiters.splice(0)) wake(); // a begin() may be waiting for room in the window
  }

  // --- session bookkeeping -------------------------------------------------------------------

  async #op<T>(run: () => Promise<T>): Promise<T> {
    this.#throwIfDead();
    if (this.#busy) throw this.#die(overlappingCall());
    this.#busy = true;
    try {
      return await run();
    } catch (error) {
      throw this.#outcome(error);
    } finally {
      this.#busy = false;
    }
  }

  /** What a failed call reports: a refused or cancelled transaction ends only that transaction. */
  #outcome(error: unknown): TandemError {
    const failure = error instanceof TandemError ? error : new TandemError(ErrorCode.InvalidState, String(error));
    if (failure.code === ErrorCode.Refused || failure.code === ErrorCode.Cancelled) return failure;
    return this.#die(failure);
  }

  #step(event: SenderEvent): void {
    this.#state = senderTransition(this.#state, event);
  }

  /** If the receiver cancelled the open transaction, reports it (once) as E_CANCELLED. */
  #takePeerCancel(): void {
    if (!this.#cancelledByPeer) return;
    this.#cancelledByPeer = false;
    throw new TandemError(ErrorCode.Cancelled, `the receiver cancelled transaction ${this.#latest.id}`);
  }

  #throwIfDead(): void {
    if (this.#error) throw this.#error;
  }

  #die(error: TandemError): TandemError {
    this.#fail(error);
    return this.#error!;
  }

  #fail(error: TandemError): void {
    if (this.#error) return;
    this.#error = error;
    this.#trace?.("error", { code: error.code });
    this.#opening?.settle(error);
    this.#opening = undefined;
    for (const answer of this.#unanswered.splice(0)) answer.settle(error); // every outstanding commit
    this.#stopDeadlineIfIdle();
    for (const wake of this.#waiters.splice(0)) wake();
    this.#transport.close();
  }

  #held(): number {
    return this.#inFlightBytes + (this.#current?.used ?? 0);
  }
}
