import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode } from "../host/errors.ts";
import { Cmd, HEADER_SIZE } from "../host/protocol/frame.ts";
import { SessionState, receiverTransition, senderTransition } from "../host/protocol/session-state.ts";
import { TransactionReceiver } from "../host/protocol/receiver.ts";
import { TransactionSender } from "../host/protocol/sender.ts";
import { TransportBase, memoryPair } from "../host/protocol/transport.ts";
import type { FaultOptions } from "../host/protocol/faulty-transport.ts";
import { seededRandom } from "../host/prng.ts";
import { configureTracing } from "../host/trace.ts";
import { KERNEL_FLAVORS } from "../host/wasm/kernels.ts";
import { concat } from "./support/bytes.ts";
import { errorCode } from "./support/errors.ts";
import { bytesEqual } from "./support/flavors.ts";
import { STREAM_ERRORS, pattern, rejectionCode, session, until } from "./support/session.ts";

const test = suite("transaction sessions");

/** A raw frame, little-endian, as a misbehaving sender would write it. */
function frame(cmd: number, id: number, seq: number, payload: Uint8Array | number = 0): Uint8Array {
  const body = typeof payload === "number" ? new Uint8Array(0) : payload;
  const out = new Uint8Array(HEADER_SIZE + body.length);
  const view = new DataView(out.buffer);
  view.setUint16(0, cmd, true);
  view.setUint16(2, id, true);
  view.setUint32(4, seq, true);
  view.setUint32(8, typeof payload === "number" ? payload : body.length, true);
  out.set(body, HEADER_SIZE);
  return out;
}

test("state machines: the listed transitions, and E_INVALID_STATE for the rest", () => {
  assert.is(senderTransition(SessionState.Init, "recv-ack"), SessionState.Ack);
  assert.is(senderTransition(SessionState.Ack, "begin"), SessionState.Begin);
  assert.is(senderTransition(SessionState.Continue, "commit"), SessionState.Commit);
  assert.is(senderTransition(SessionState.Commit, "recv-nack"), SessionState.Nack);
  assert.is(receiverTransition(SessionState.Continue, "cancel"), SessionState.Cancel);
  assert.is(receiverTransition(SessionState.Atomic, "applied"), SessionState.Ack);
  assert.is(errorCode(() => senderTransition(SessionState.Init, "begin")), ErrorCode.InvalidState);
  assert.is(errorCode(() => senderTransition(SessionState.Ack, "commit")), ErrorCode.InvalidState);
  assert.is(errorCode(() => receiverTransition(SessionState.Ack, "recv-continue")), ErrorCode.InvalidState);
  assert.is(errorCode(() => receiverTransition(SessionState.Commit, "recv-begin")), ErrorCode.InvalidState);
});

test("transactions arrive whole and in order, whatever the chunking, kernel flavor and write call", async () => {
  for (const flavor of KERNEL_FLAVORS) {
    for (const maxChunk of [1, 7, 4096, 65536]) {
      const random = seededRandom(maxChunk);
      const s = await session({
        faults: { maxChunk, seed: maxChunk },
        sender: { bufferSize: 64 * 1024, buffers: 3, kernels: flavor },
        receiver: { kernels: flavor },
      });
      const sent: Uint8Array[] = [];
      const count = maxChunk === 1 ? 2 : 6;
      for (let t = 0; t < count; t++) {
        const parts = Array.from({ length: 1 + Math.floor(random() * 6) }, (_, i) =>
          pattern(maxChunk === 1 ? 50 : Math.floor(random() * 150_000), t * 31 + i));
        await s.sender.begin();
        for (const part of parts) await (random() < 0.5 ? s.sender.write(part) : s.sender.writeNoCopy(part));
        await s.sender.commit();
        sent.push(concat(parts));
      }
      assert.equal(s.seen.map((t) => t.id), sent.map((_, i) => i), `${flavor}/${maxChunk}: ids advance`);
      s.seen.forEach((t, i) => assert.equal(t.bytes, sent[i], `${flavor}/${maxChunk}: transaction ${i}`));
      assert.is(s.sender.stats.acked, count);
      assert.is(s.receiver.stats.applied, count);
      s.sender.close();
      await s.receiver.done;
    }
  }
});

test("ATOMIC is one frame; a consumer that throws NACKs it and the session goes on", async () => {
  const s = await session({ consume: (t) => { if (t.byteLength === 3) throw new Error("cannot apply"); } });
  await s.sender.atomic(pattern(1000, 1));
  assert.is(await rejectionCode(s.sender.atomic(pattern(3, 2))), ErrorCode.Refused);
  assert.is(s.sender.state, SessionState.Nack);
  await s.sender.atomic(new Uint8Array(0));
  await s.sender.begin();
  await s.sender.write(pattern(10, 3));
  await s.sender.commit();
  assert.equal(s.seen.map((t) => [t.id, t.atomic, t.bytes.length]), [[0, true, 1000], [1, true, 3], [2, true, 0], [3, false, 10]]);
  assert.equal([s.sender.stats.acked, s.sender.stats.refused, s.receiver.stats.refused], [3, 1, 1]);
  assert.is(await rejectionCode(s.sender.atomic(new Uint8Array(300_000))), ErrorCode.PayloadTooLarge, "an ATOMIC larger than a buffer");
});

test("the sender's CANCEL drops the transaction on both sides", async () => {
  const s = await session();
  await s.sender.begin();
  await s.sender.write(pattern(5000, 4));
  await s.sender.cancel();
  await s.sender.begin();
  await s.sender.write(pattern(20, 5));
  await s.sender.commit();
  assert.equal(s.seen.map((t) => [t.id, t.bytes.length]), [[1, 20]], "only the second transaction, with the next id");
  assert.is(s.receiver.stats.cancelledBySender, 1);
});

test("the receiver's CANCEL reaches the sender as E_CANCELLED, frames in flight are dropped", async () => {
  const s = await session({ sender: { bufferSize: 4096, buffers: 2 } });
  await s.sender.begin();
  await s.sender.write(pattern(5000, 6)); // more than a buffer: the first one goes out
  await until(() => s.receiver.state === SessionState.Continue);
  s.receiver.cancel();
  await until(() => s.sender.state === SessionState.Cancel);
  assert.is(await rejectionCode(s.sender.write(pattern(3000, 7))), ErrorCode.Cancelled);
  await s.sender.begin();
  await s.sender.write(pattern(8, 8));
  await s.sender.commit();
  assert.equal(s.seen.map((t) => [t.id, t.bytes.length]), [[1, 8]]);

  // Cancelled while the COMMIT is already on its way: the sender's commit reports it.
  const r = await session({ sender: { bufferSize: 4096, buffers: 2 } });
  await r.sender.begin();
  await r.sender.write(pattern(5000, 9));
  await until(() => r.receiver.state === SessionState.Continue);
  r.receiver.cancel();
  assert.is(await rejectionCode(r.sender.commit()), ErrorCode.Cancelled);
  await r.sender.atomic(pattern(4, 10));
  assert.equal(r.seen.map((t) => [t.id, t.bytes.length]), [[1, 4]]);
  assert.is(r.receiver.stats.cancelledHere, 1);
});

test("back-pressure: a stalled transport freezes the sender at its pool, and COMMIT waits", async () => {
  const s = await session({ sender: { bufferSize: 8192, buffers: 3 }, faults: { stallWrites: true } });
  await s.sender.begin();
  let written = 0;
  const writing = (async () => {
    for (let i = 0; i < 20; i++) {
      await s.sender.write(pattern(4096, i));
      written++;
    }
  })();
  await until(() => s.sender.stats.frozen);
  const frozen = s.sender.stats;
  assert.ok(written < 20, "writes wait while frozen");
  assert.ok(frozen.heldBytes <= frozen.heldLimit && frozen.heldLimit === 3 * 8192, `held ${frozen.heldBytes} within ${frozen.heldLimit}`);
  s.wire.release();
  await writing;
  await s.sender.commit();
  assert.is(s.seen.length, 1);
  assert.is(s.seen[0].bytes.length, 20 * 4096);
  assert.ok(s.sender.stats.freezes >= 1);
  assert.not.ok(s.sender.stats.frozen);
  assert.ok(s.sender.stats.peakHeldBytes <= 3 * 8192);
});

test("writeNoCopy sends from the caller's bytes: the pool holds headers only, and COMMIT waits for the bytes", async () => {
  const maxFramePayload = 8192 - HEADER_SIZE;
  const s = await session({ sender: { bufferSize: 8192, buffers: 2, maxFramePayload }, faults: { stallWrites: true } });
  await s.sender.begin();
  const big = pattern(100_000, 3); // more than the whole pool: 13 frames of at most 8180 bytes
  const writing = s.sender.writeNoCopy(big);
  await until(() => s.sender.stats.frozen);
  assert.ok(s.sender.stats.peakHeldBytes <= 2 * 8192, `pool use ${s.sender.stats.peakHeldBytes}`);
  s.wire.release();
  await writing;
  await s.sender.write(pattern(10, 4));
  await s.sender.commit();
  assert.equal(s.seen[0].bytes, concat([big, pattern(10, 4)]));
  assert.is(s.sender.stats.bytes, 2 * HEADER_SIZE + Math.ceil(100_000 / maxFramePayload) * HEADER_SIZE + 100_000 + HEADER_SIZE + 10);
});

test("writeNoCopy cuts frames at maxFramePayload, not at the pool's buffer size", async () => {
  // By default one frame per write up to 1 MiB: a 256 KiB write is one header and one payload.
  const s = await session({ sender: { bufferSize: 4096, buffers: 2 } });
  await s.sender.begin();
  const big = pattern(256 * 1024, 5);
  await s.sender.writeNoCopy(big);
  await s.sender.commit();
  assert.is(s.sender.stats.frames, 3); // BEGIN, one CONTINUE, COMMIT
  assert.equal(s.seen[0].bytes, big);

  const t = await session({ sender: { maxFramePayload: 100_000 } });
  await t.sender.begin();
  await t.sender.writeNoCopy(big);
  await t.sender.commit();
  assert.is(t.sender.stats.frames, 2 + Math.ceil(big.length / 100_000));
  assert.equal(t.seen[0].bytes, big);

  // A sender whose frames pass the receiver's limit is refused, as any oversized frame.
  const u = await session({ receiver: { maxFramePayload: 65_536 } });
  await u.sender.begin();
  await u.sender.writeNoCopy(big);
  assert.is(await rejectionCode(u.sender.commit()), ErrorCode.PeerClosed);
  assert.is(await rejectionCode(u.receiver.done), ErrorCode.PayloadTooLarge);
});

test("limits: a frame or a transaction over the receiver's limit is E_PAYLOAD_TOO_LARGE, never delivered", async () => {
  const frameTooBig = await session({ receiver: { maxFramePayload: 1000 } });
  await frameTooBig.sender.begin();
  await frameTooBig.sender.write(pattern(5000, 1));
  assert.is(await rejectionCode(frameTooBig.sender.commit()), ErrorCode.PeerClosed);
  assert.is(await rejectionCode(frameTooBig.receiver.done), ErrorCode.PayloadTooLarge);

  const txnTooBig = await session({ receiver: { maxTransactionBytes: 10_000 } });
  await txnTooBig.sender.begin();
  for (let i = 0; i < 5; i++) await txnTooBig.sender.write(pattern(3000, i));
  assert.is(await rejectionCode(txnTooBig.sender.commit()), ErrorCode.PeerClosed);
  assert.is(await rejectionCode(txnTooBig.receiver.done), ErrorCode.PayloadTooLarge);
  assert.is(frameTooBig.seen.length + txnTooBig.seen.length, 0);
});

test("every header field corrupted gets its error code, and nothing is delivered", async () => {
  const cases: [string, Uint8Array[], string][] = [
    ["unknown cmd", [frame(Cmd.Begin, 0, 0), frame(0x99, 0, 1)], ErrorCode.RecvHeader],
    ["ACK from a sender", [frame(Cmd.Begin, 0, 0), frame(Cmd.Ack, 0, 1)], ErrorCode.InvalidState],
    ["id", [frame(Cmd.Begin, 0, 0), frame(Cmd.Continue, 1, 1, pattern(4, 1))], ErrorCode.IdMismatch],
    ["first id", [frame(Cmd.Begin, 7, 0)], ErrorCode.IdMismatch],
    ["seq skips", [frame(Cmd.Begin, 0, 0), frame(Cmd.Continue, 0, 2, pattern(4, 1))], ErrorCode.SeqMismatch],
    ["seq repeats", [frame(Cmd.Begin, 0, 0), frame(Cmd.Continue, 0, 1, pattern(4, 1)), frame(Cmd.Commit, 0, 1)], ErrorCode.SeqMismatch],
    ["BEGIN seq", [frame(Cmd.Begin, 0, 3)], ErrorCode.SeqMismatch],
    ["payload_len over the limit", [frame(Cmd.Begin, 0, 0), frame(Cmd.Continue, 0, 1, 0xffffffff)], ErrorCode.PayloadTooLarge],
    ["payload on COMMIT", [frame(Cmd.Begin, 0, 0), frame(Cmd.Commit, 0, 1, pattern(2, 1))], ErrorCode.RecvHeader],
    ["CONTINUE without BEGIN", [frame(Cmd.Continue, 0, 1, pattern(2, 1))], ErrorCode.InvalidState],
    ["payload_len short: payload bytes read as a header", [frame(Cmd.Begin, 0, 0), frame(Cmd.Continue, 0, 1, pattern(64, 5)).map((b, i) => (i === 8 ? 20 : b)), frame(Cmd.Commit, 0, 2)], "any"],
  ];
  for (const [name, frames, code] of cases) {
    const [, raw] = memoryPair();
    const [senderEnd, receiverEnd] = memoryPair();
    void raw;
    const seen: number[] = [];
    const receiver = new TransactionReceiver(receiverEnd, (t) => void seen.push(t.id), { maxFramePayload: 1 << 16 });
    receiver.open();
    for (const f of frames) senderEnd.write(f, () => {});
    senderEnd.close();
    const got = await rejectionCode(receiver.done);
    if (code === "any") assert.ok(got !== undefined && STREAM_ERRORS.includes(got), `${name}: ${got}`);
    else assert.is(got, code, name);
    assert.equal(seen, [], `${name}: nothing delivered`);
  }
});

/** A transport end that delivers exactly the chunks a test gives it. */
class HandFed extends TransportBase {
  write(_chunk: Uint8Array, done: (error?: Error) => void): boolean {
    queueMicrotask(() => done());
    return true;
  }
  close(): void {
    this.ended();
  }
  feed(chunk: Uint8Array): void {
    this.deliver(chunk);
  }
}

test("payloads reach the consumer uncopied: segments are views into the delivered chunks", async () => {
  const end = new HandFed();
  const seen: { buffers: ArrayBufferLike[]; bytes: Uint8Array }[] = [];
  const receiver = new TransactionReceiver(end, (t) => void seen.push({ buffers: t.segments.map((s) => s.buffer), bytes: t.bytes() }));
  receiver.open();
  const chunk = concat([frame(Cmd.Begin, 0, 0), frame(Cmd.Continue, 0, 1, pattern(5000, 1)), frame(Cmd.Commit, 0, 2)]);
  end.feed(chunk);
  await until(() => seen.length === 1);
  assert.is(seen[0].buffers[0], chunk.buffer, "the segment is a view into the chunk itself");
  assert.equal(seen[0].bytes, pattern(5000, 1));
});

test("a peer trickling tiny frames in mostly empty buffers cannot make the receiver pin them", async () => {
  const end = new HandFed();
  let delivered = 0;
  const receiver = new TransactionReceiver(end, (t) => void (delivered = t.byteLength));
  receiver.open();
  end.feed(frame(Cmd.Begin, 0, 0));
  for (let i = 1; i <= 200; i++) {
    // Each frame alone at the start of its own 64 KiB buffer, as a socket read of a tiny packet is.
    const buffer = new Uint8Array(65536);
    buffer.set(frame(Cmd.Continue, 0, i, Uint8Array.of(i & 0xff)));
    end.feed(buffer.subarray(0, HEADER_SIZE + 1));
  }
  end.feed(frame(Cmd.Commit, 0, 201));
  await until(() => delivered === 200);
  assert.ok(receiver.stats.peakBufferedBytes < 65536, `peak ${receiver.stats.peakBufferedBytes} bytes, not 200 buffers of 64 KiB`);
});

test("an opening ACK that comes before open() is called is not lost", async () => {
  const [a, b] = memoryPair();
  const receiver = new TransactionReceiver(b, () => {});
  receiver.open();
  await new Promise((r) => setTimeout(r, 5)); // the ACK has arrived at a's end, no sender yet
  const sender = new TransactionSender(a);
  await new Promise((r) => setTimeout(r, 5)); // and reached the sender before open()
  await sender.open();
  await sender.atomic(Uint8Array.of(1));
  assert.is(sender.stats.acked, 1);
});

test("bytes that arrive before a handler is set are kept for it, not dropped", async () => {
  const end = new HandFed();
  end.feed(Uint8Array.of(1, 2));
  end.feed(Uint8Array.of(3));
  const got: number[] = [];
  end.onData((chunk) => got.push(...chunk));
  end.feed(Uint8Array.of(4));
  assert.equal(got, [1, 2, 3, 4]);
});

test("a frame before the receiver opened is E_INVALID_STATE", async () => {
  const [senderEnd, receiverEnd] = memoryPair();
  const receiver = new TransactionReceiver(receiverEnd, () => {});
  senderEnd.write(frame(Cmd.Begin, 0, 0), () => {});
  assert.is(await rejectionCode(receiver.done), ErrorCode.InvalidState);
});

test("a stream cut at every byte: a clear error, and the consumer sees the transaction only if COMMIT arrived", async () => {
  const payload = pattern(100, 11);
  const wire = HEADER_SIZE * 3 + payload.length; // BEGIN, CONTINUE+payload, COMMIT
  for (let cut = 0; cut <= wire; cut++) {
    const s = await session({ faults: { cutAfter: cut } });
    await s.sender.begin();
    await s.sender.write(payload);
    const commit = await rejectionCode(s.sender.commit());
    const done = await rejectionCode(s.receiver.done);
    assert.ok(commit === ErrorCode.Flush || commit === ErrorCode.PeerClosed, `cut ${cut}: the sender learns the stream broke (${commit})`);
    const inPayload = cut >= 2 * HEADER_SIZE && cut < 2 * HEADER_SIZE + payload.length;
    const onBoundary = cut === HEADER_SIZE || cut === 2 * HEADER_SIZE + payload.length;
    if (cut === wire) {
      // Whole and applied; the peer then left between transactions. Whether the receiver notices
      // the close or the failed ACK first, it ends cleanly or with E_PEER_CLOSED.
      assert.ok(done === undefined || done === ErrorCode.PeerClosed, `cut ${cut}: ${done}`);
    } else {
      const want = cut === 0 ? undefined // opened and idle: an orderly end
        : onBoundary ? ErrorCode.PeerClosed : inPayload ? ErrorCode.RecvPayload : ErrorCode.RecvHeader;
      assert.is(done, want, `cut ${cut}`);
    }
    if (cut === wire) {
      assert.is(s.seen.length, 1, "the whole transaction arrived: it is applied even though the ACK is lost");
      assert.equal(s.seen[0].bytes, payload);
    } else {
      assert.is(s.seen.length, 0, `cut ${cut}: nothing delivered`);
    }
  }
});

test("the receiver vanishing while the sender waits for ACK is E_PEER_CLOSED; later calls fail the same at once", async () => {
  const s = await session({ consume: () => new Promise(() => {}) }); // never finishes applying
  await s.sender.begin();
  await s.sender.write(pattern(10, 1));
  const commit = s.sender.commit();
  await until(() => s.seen.length === 1);
  s.receiverEnd.close();
  assert.is(await rejectionCode(commit), ErrorCode.PeerClosed);
  const first = s.sender.error;
  for (const call of [() => s.sender.begin(), () => s.sender.atomic(new Uint8Array(1)), () => s.sender.open()]) {
    try {
      await call();
      assert.unreachable("a dead session accepted a call");
    } catch (error) {
      assert.is(error, first, "the very same error");
    }
  }
});

test("timeouts: no opening ACK, and silence inside a transaction", async () => {
  const quiet = await session({ open: false, sender: { responseTimeoutMs: 30 } });
  assert.is(await rejectionCode(quiet.sender.open()), ErrorCode.Timeout);

  const idle = await session({ receiver: { idleTimeoutMs: 30 } });
  await idle.sender.begin();
  await idle.sender.write(pattern(10, 2));
  await new Promise((r) => setTimeout(r, 5));
  // The sender's buffer is not flushed until COMMIT: push it so the receiver sees an open transaction.
  idle.sender.write(pattern(300_000, 3)).catch(() => {});
  assert.is(await rejectionCode(idle.receiver.done), ErrorCode.Timeout);
  assert.is(idle.seen.length, 0);
});

test("transaction ids wrap from 65535 to 0 on both sides", async () => {
  const s = await session();
  const one = new Uint8Array(1);
  for (let i = 0; i < 65536 + 2; i++) await s.sender.atomic(one);
  assert.equal(s.seen.slice(-3).map((t) => t.id), [65535, 0, 1]);
  assert.equal([s.sender.nextId, s.receiver.expectedId], [2, 2]);
});

test("misuse is E_INVALID_STATE: commit without begin, overlapping calls", async () => {
  const s = await session();
  assert.is(await rejectionCode(s.sender.commit()), ErrorCode.InvalidState);
  const t = await session();
  await t.sender.begin();
  const committing = t.sender.commit(); // in progress until the ACK comes back
  assert.is(await rejectionCode(t.sender.write(pattern(10, 2))), ErrorCode.InvalidState);
  await rejectionCode(committing);
});

test("trace points, off by default, name each step", async () => {
  const lines: string[] = [];
  configureTracing("protocol", (line) => lines.push(line));
  try {
    const s = await session();
    await s.sender.atomic(pattern(10, 1));
  } finally {
    configureTracing();
  }
  const events = lines.map((l) => l.split(" ")[2]);
  for (const e of ["protocol.send_header", "protocol.recv_header", "protocol.deliver", "protocol.flush"]) {
    assert.ok(events.includes(e), `${e} in ${events.join(",")}`);
  }
  assert.match(lines.find((l) => l.includes("send_header"))!, /cmd=ACK id=0/);
});

// --- pipelining (SenderOptions.window) ------------------------------------------------------

/**
 * Pipelines `transactions` (each a list of parts) through `sender`: no commit is awaited, so
 * begin() itself waits at the window; each commit's outcome (its error code, or undefined) is
 * collected. The parts go through write() or writeNoCopy() at random; with `cancelChance`, some
 * transactions are cancelled by the sender instead of committed (outcome "cancel").
 */
async function pipeline(
  sender: TransactionSender, transactions: Uint8Array[][], random: () => number, cancelChance = 0,
): Promise<(string | undefined)[]> {
  const outcomes: Promise<string | undefined>[] = [];
  for (const parts of transactions) {
    await sender.begin();
    for (const part of parts) await (random() < 0.5 ? sender.write(part) : sender.writeNoCopy(part));
    if (random() < cancelChance) {
      await sender.cancel();
      outcomes.push(Promise.resolve("cancel"));
    } else {
      outcomes.push(rejectionCode(sender.commit())); // left outstanding: the next begin() comes at once
    }
    assert.ok(sender.stats.unanswered <= 4, `${sender.stats.unanswered} unanswered with a window of 4`);
  }
  return Promise.all(outcomes);
}

/** Transactions of 1 to 4 parts of up to `max` bytes each. */
function someTransactions(count: number, max: number, random: () => number): Uint8Array[][] {
  return Array.from({ length: count }, (_, t) =>
    Array.from({ length: 1 + Math.floor(random() * 4) }, (_, i) => pattern(Math.floor(random() * max), t * 17 + i + 1)));
}

/** A consumer that applies one transaction each time `release` is called. */
function gatedConsumer(): { consume: () => Promise<void>; release: (n?: number) => void } {
  let allowed = 0;
  let wake: (() => void) | undefined;
  return {
    consume: async () => {
      while (allowed === 0) await new Promise<void>((resolve) => (wake = resolve));
      allowed--;
    },
    release: (n = 1) => {
      allowed += n;
      wake?.();
    },
  };
}

test("state machines: pipelining's transitions", () => {
  assert.is(senderTransition(SessionState.Commit, "begin"), SessionState.Begin);
  assert.is(senderTransition(SessionState.Atomic, "atomic"), SessionState.Atomic);
  for (const state of [SessionState.Begin, SessionState.Continue, SessionState.Commit, SessionState.Atomic, SessionState.Cancel]) {
    assert.is(senderTransition(state, "recv-earlier"), state, `an earlier answer leaves ${state} as it is`);
  }
  for (const state of [SessionState.Init, SessionState.Ack, SessionState.Nack]) {
    assert.is(errorCode(() => senderTransition(state, "recv-earlier")), ErrorCode.InvalidState, state);
  }
  assert.is(errorCode(() => senderTransition(SessionState.Begin, "begin")), ErrorCode.InvalidState);
});

test("pipelined (window 4): transactions arrive whole and in order and every commit resolves, whatever the transport", async () => {
  const wires: [string, FaultOptions | undefined][] = [
    ["in memory", undefined],
    ["chunks of 1-7 bytes", { maxChunk: 7, seed: 3 }],
    ["chunks of 1-4096 bytes, delayed", { maxChunk: 4096, delayMs: 1, seed: 4 }],
  ];
  for (const [name, faults] of wires) {
    const random = seededRandom(name.length);
    const small = faults?.maxChunk === 7;
    const s = await session({ faults, sender: { window: 4, bufferSize: 16 * 1024, buffers: 3 } });
    const transactions = someTransactions(small ? 12 : 40, small ? 400 : 20_000, random);
    const outcomes = await pipeline(s.sender, transactions, random, 0.1);
    assert.ok(outcomes.every((o) => o === undefined || o === "cancel"), `${name}: ${outcomes.join(",")}`);
    const committed = transactions.map((parts, id) => ({ id, bytes: concat(parts) })).filter((_, i) => outcomes[i] === undefined);
    assert.equal(s.seen.map((t) => t.id), committed.map((t) => t.id), `${name}: ids in order, cancelled ones never seen`);
    s.seen.forEach((t, i) => assert.equal(t.bytes, committed[i].bytes, `${name}: transaction ${t.id}`));
    assert.is(s.sender.stats.acked, committed.length);
    assert.is(s.sender.stats.unanswered, 0);
    assert.ok(s.sender.stats.peakUnanswered > 1 && s.sender.stats.peakUnanswered <= 4, `${name}: peak ${s.sender.stats.peakUnanswered} unanswered`);
    assert.is(s.receiver.stats.cancelledBySender, transactions.length - committed.length);
    s.sender.close();
    await s.receiver.done;
  }
});

test("pipelined: atomic() may follow an unawaited commit() or atomic(), and commit() an unawaited atomic()'s begin", async () => {
  const s = await session({ sender: { window: 3 } });
  const outcomes = [rejectionCode(s.sender.atomic(pattern(10, 1))), rejectionCode(s.sender.atomic(pattern(20, 2)))];
  await s.sender.begin();
  await s.sender.write(pattern(30, 3));
  outcomes.push(rejectionCode(s.sender.commit()));
  outcomes.push(rejectionCode(s.sender.atomic(pattern(40, 4))));
  assert.equal(await Promise.all(outcomes), [undefined, undefined, undefined, undefined]);
  assert.equal(s.seen.map((t) => [t.id, t.atomic, t.bytes.length]), [[0, true, 10], [1, true, 20], [2, false, 30], [3, true, 40]]);
  assert.is(s.sender.state, SessionState.Ack);
});

test("pipelined: a NACK rejects only its own commit with E_REFUSED; the later ones are applied and ACKed", async () => {
  const random = seededRandom(9);
  const s = await session({
    faults: { maxChunk: 300, seed: 9 },
    sender: { window: 4 },
    consume: async (t) => {
      await new Promise((r) => setTimeout(r, 1)); // slow enough for the window to fill
      if (t.id === 3 || t.id === 6) throw new Error("cannot apply");
    },
  });
  const transactions = someTransactions(10, 5000, random);
  const outcomes = await pipeline(s.sender, transactions, random);
  assert.equal(outcomes, transactions.map((_, i) => (i === 3 || i === 6 ? ErrorCode.Refused : undefined)));
  assert.equal(s.seen.map((t) => t.id), transactions.map((_, i) => i), "the refused ones reached the consumer too, in order");
  s.seen.forEach((t, i) => assert.equal(t.bytes, concat(transactions[i])));
  assert.equal([s.sender.stats.acked, s.sender.stats.refused, s.receiver.stats.applied, s.receiver.stats.refused], [8, 2, 8, 2]);
  assert.is(s.sender.stats.peakUnanswered, 4);
  assert.is(s.sender.state, SessionState.Ack);
  assert.is(s.sender.error, undefined);
});

test("pipelined: the receiver's CANCEL rejects only that commit with E_CANCELLED; the rest goes on", async () => {
  const random = seededRandom(11);
  let cancelledAt: { senderNextId: number; unanswered: number } | undefined;
  const transactions = someTransactions(8, 3000, random).map((parts) => [...parts, pattern(600, 99)]);
  const s = await session({
    faults: { maxChunk: 512, delayMs: 1, seed: 11 },
    sender: { window: 4 },
    afterChunk: (receiver) => {
      // Cancel transaction 3 half-way through, by which time the sender has committed it and gone on.
      if (!cancelledAt && receiver.expectedId === 3 && receiver.state === SessionState.Continue) {
        receiver.cancel();
        cancelledAt = { senderNextId: s.sender.nextId, unanswered: s.sender.stats.unanswered };
      }
    },
  });
  const outcomes = await pipeline(s.sender, transactions, random);
  assert.ok(cancelledAt, "the receiver cancelled transaction 3");
  assert.ok(cancelledAt.senderNextId > 4, `the sender had begun transaction ${cancelledAt.senderNextId - 1} behind it`);
  assert.equal(outcomes, transactions.map((_, i) => (i === 3 ? ErrorCode.Cancelled : undefined)));
  const applied = transactions.map((parts, id) => ({ id, bytes: concat(parts) })).filter((t) => t.id !== 3);
  assert.equal(s.seen.map((t) => t.id), applied.map((t) => t.id));
  s.seen.forEach((t, i) => assert.equal(t.bytes, applied[i].bytes));
  assert.equal([s.sender.stats.acked, s.sender.stats.cancelled, s.receiver.stats.cancelledHere], [7, 1, 1]);
  assert.is(s.sender.error, undefined);
});

test("pipelined: begin() waits (not fails) while the window is full, and goes on after an answer", async () => {
  const gate = gatedConsumer();
  const s = await session({ sender: { window: 4 }, consume: gate.consume });
  const outcomes: Promise<string | undefined>[] = [];
  for (let i = 0; i < 4; i++) {
    await s.sender.begin();
    await s.sender.write(pattern(100, i));
    outcomes.push(rejectionCode(s.sender.commit()));
  }
  let begun = false;
  const beginning = s.sender.begin().then(() => void (begun = true));
  await until(() => s.seen.length === 1);
  await new Promise((r) => setTimeout(r, 20));
  assert.not.ok(begun, "begin() has not resolved while 4 are unanswered");
  assert.is(s.sender.stats.unanswered, 4);
  assert.is(s.sender.state, SessionState.Commit);
  gate.release();
  await beginning;
  assert.is(await outcomes[0], undefined);
  assert.is(s.sender.stats.unanswered, 3);
  await s.sender.write(pattern(5, 5));
  outcomes.push(rejectionCode(s.sender.commit()));
  gate.release(4);
  assert.equal(await Promise.all(outcomes), [undefined, undefined, undefined, undefined, undefined]);
  assert.equal(s.seen.map((t) => t.id), [0, 1, 2, 3, 4]);
});

test("pipelined: the receiver closing with several outstanding rejects them all, and a waiting begin(), with E_PEER_CLOSED", async () => {
  const s = await session({ sender: { window: 4 }, consume: () => new Promise(() => {}) }); // never finishes applying
  const outcomes: Promise<string | undefined>[] = [];
  for (let i = 0; i < 4; i++) {
    await s.sender.begin();
    await s.sender.write(pattern(1000, i));
    outcomes.push(rejectionCode(s.sender.commit()));
  }
  const waiting = rejectionCode(s.sender.begin());
  await until(() => s.seen.length === 1 && s.receiver.stats.bytes === s.sender.stats.bytes);
  s.receiverEnd.close();
  assert.equal(await Promise.all(outcomes), Array(4).fill(ErrorCode.PeerClosed));
  assert.is(await waiting, ErrorCode.PeerClosed);
  assert.is(await rejectionCode(s.sender.atomic(Uint8Array.of(1))), ErrorCode.PeerClosed);
  assert.is(s.sender.stats.unanswered, 0);
});

test("pipelined: each outstanding transaction has its own timeout; one passing ends the session for all", async () => {
  const s = await session({ sender: { window: 4, responseTimeoutMs: 40 }, consume: () => new Promise(() => {}) });
  const outcomes = [0, 1, 2].map((i) => rejectionCode(s.sender.atomic(pattern(10, i))));
  assert.equal(await Promise.all(outcomes), [ErrorCode.Timeout, ErrorCode.Timeout, ErrorCode.Timeout]);
  assert.is(s.sender.error?.code, ErrorCode.Timeout);
});

test("pipelined: a timeout runs from each transaction's own commit, after earlier ones were answered", async () => {
  let calls = 0;
  const s = await session({ sender: { window: 4, responseTimeoutMs: 40 }, consume: () => (calls++ === 0 ? undefined : new Promise(() => {})) });
  const outcomes = [0, 1, 2].map((i) => rejectionCode(s.sender.atomic(pattern(10, i))));
  assert.equal(await Promise.all(outcomes), [undefined, ErrorCode.Timeout, ErrorCode.Timeout]);
  assert.is(s.sender.stats.acked, 1);
  assert.is(s.sender.error?.code, ErrorCode.Timeout);
});

test("a consumer that returns at once is answered at once: ACK, or NACK if it throws, in order, for a burst in one chunk", async () => {
  const [senderEnd, receiverEnd] = memoryPair();
  const applied: number[] = [];
  const receiver = new TransactionReceiver(receiverEnd, (t) => {
    if (t.id % 3 === 1) throw new Error(`refusing ${t.id}`);
    applied.push(t.id);
  });
  receiver.open();
  // 200 ATOMIC frames in one chunk: each is applied and answered before the next is decoded.
  const burst = concat(Array.from({ length: 200 }, (_, id) => frame(Cmd.Atomic, id, 0, pattern(5, id))));
  const answers: Uint8Array[] = [];
  senderEnd.onData((chunk) => answers.push(chunk));
  senderEnd.write(burst, () => {});
  await until(() => receiver.stats.applied + receiver.stats.refused === 200);
  await until(() => answers.reduce((n, a) => n + a.length, 0) === (200 + 1) * HEADER_SIZE);
  const all = concat(answers);
  for (let id = 0; id < 200; id++) {
    const at = (id + 1) * HEADER_SIZE; // after the opening ACK
    assert.is(all[at], id % 3 === 1 ? Cmd.Nack : Cmd.Ack, `answer to ${id}`);
    assert.is(all[at + 2] | (all[at + 3] << 8), id);
  }
  assert.equal(applied, Array.from({ length: 200 }, (_, id) => id).filter((id) => id % 3 !== 1));
  assert.is(receiver.expectedId, 200);
});

test("pipelined: an answer that is not for the oldest outstanding transaction is E_ID_MISMATCH", async () => {
  const [senderEnd, receiverEnd] = memoryPair();
  const sender = new TransactionSender(senderEnd, { window: 4 });
  receiverEnd.write(frame(Cmd.Ack, 0, 0), () => {});
  await sender.open();
  const outcomes = [0, 1, 2].map((i) => rejectionCode(sender.atomic(pattern(10, i))));
  await until(() => sender.stats.unanswered === 3);
  receiverEnd.write(frame(Cmd.Ack, 0, 0), () => {}); // in order: fine
  await until(() => sender.stats.acked === 1);
  receiverEnd.write(frame(Cmd.Ack, 2, 0), () => {}); // skips 1
  assert.equal(await Promise.all(outcomes), [undefined, ErrorCode.IdMismatch, ErrorCode.IdMismatch]);
  assert.is(sender.error?.code, ErrorCode.IdMismatch);
});

test("pipelined: the receiver's memory bound covers the window queued behind a slow consumer, and still holds past it", async () => {
  const receiver = { maxTransactionBytes: 100_000, maxFramePayload: 16_384 };
  const bound = 100_000 + 16_384 + (1 << 20) + 2 * HEADER_SIZE; // maxTransactionBytes + maxFramePayload + 1 MiB + 24
  for (const window of [4, 16]) {
    const gate = gatedConsumer();
    const s = await session({ receiver, sender: { window, bufferSize: 16_384 }, consume: gate.consume });
    const outcomes: Promise<string | undefined>[] = [];
    for (let i = 0; i < window; i++) {
      try {
        await s.sender.begin();
        await s.sender.write(pattern(90_000, i));
      } catch {
        break; // the receiver ended the session
      }
      outcomes.push(rejectionCode(s.sender.commit()));
    }
    if (window === 4) {
      await until(() => s.sender.stats.unanswered === 4 && s.receiver.stats.bytes === s.sender.stats.bytes); // one applying, three queued
      assert.ok(s.receiver.stats.bufferedBytes >= 4 * 90_000 && s.receiver.stats.bufferedBytes <= bound, `holds ${s.receiver.stats.bufferedBytes}`);
      gate.release(4);
      assert.equal(await Promise.all(outcomes), Array(4).fill(undefined));
    } else {
      // 16 x 90 kB queued is over the bound: the receiver ends the session rather than hold it.
      assert.is(await rejectionCode(s.receiver.done), ErrorCode.PayloadTooLarge);
      assert.ok(s.receiver.stats.peakBufferedBytes <= bound, `peak ${s.receiver.stats.peakBufferedBytes}`);
      const codes = await Promise.all(outcomes);
      assert.ok(codes.every((code) => code === ErrorCode.PeerClosed || code === ErrorCode.Flush), codes.join(","));
      gate.release(16);
    }
  }
});

test("window 1 (the default) stays stop-and-wait: begin() before the last commit settled is E_INVALID_STATE", async () => {
  for (const sender of [undefined, { window: 1 }]) {
    const s = await session({ sender });
    await s.sender.begin();
    const committing = s.sender.commit();
    assert.is(await rejectionCode(s.sender.begin()), ErrorCode.InvalidState);
    await rejectionCode(committing);
    const t = await session({ sender });
    const atomic = t.sender.atomic(pattern(3, 1));
    assert.is(await rejectionCode(t.sender.atomic(pattern(3, 2))), ErrorCode.InvalidState);
    await rejectionCode(atomic);
  }
  assert.is(errorCode(() => new TransactionSender(memoryPair()[0], { window: 0 })), ErrorCode.BadArgument);
  for (const maxFramePayload of [0, 1.5, 2 ** 32]) {
    assert.is(errorCode(() => new TransactionSender(memoryPair()[0], { maxFramePayload })), ErrorCode.BadArgument);
  }
});

const FUZZ_RUNS = Number(globalThis.process?.env?.TANDEM_FUZZ ?? 150);

/** A valid two-transaction stream, the payloads each transaction carries, and where its headers are. */
function fuzzStream() {
  const payloads = [pattern(300, 1), pattern(5, 2), pattern(2000, 3)];
  const frames = [
    frame(Cmd.Begin, 0, 0), frame(Cmd.Continue, 0, 1, payloads[0]), frame(Cmd.Continue, 0, 2, payloads[1]), frame(Cmd.Commit, 0, 3),
    frame(Cmd.Atomic, 1, 0, payloads[2]),
  ];
  const headerBytes: number[] = [];
  let at = 0;
  for (const f of frames) {
    for (let i = 0; i < HEADER_SIZE; i++) headerBytes.push(at + i);
    at += f.length;
  }
  return { stream: concat(frames), headerBytes, valid: [concat([payloads[0], payloads[1]]), payloads[2]] };
}

/**
 * The transactions `bytes` frame as complete, in stream order: the payloads from a BEGIN to its
 * COMMIT, and each ATOMIC's, walking the headers as they say with no other check. Frames carry
 * no checksum (TCP's protects the bytes), so a corrupted payload_len can make a frame shorter or
 * longer than it was sent; what a receiver may deliver is what the bytes, as they arrived,
 * frame as whole: never a transaction whose COMMIT or ATOMIC payload did not arrive, and never
 * one cut short by a CANCEL, an error or the end of the stream. A receiver stops at the first
 * error, up to which it walks the same frames, so what it delivers must be a subsequence of this.
 */
function framedAsWhole(bytes: Uint8Array): Uint8Array[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const whole: Uint8Array[] = [];
  let open: Uint8Array[] | undefined;
  for (let at = 0; at + HEADER_SIZE <= bytes.length; ) {
    const cmd = view.getUint16(at, true);
    const length = view.getUint32(at + 8, true);
    const end = at + HEADER_SIZE + length;
    if (end > bytes.length) break;
    const payload = bytes.subarray(at + HEADER_SIZE, end);
    at = end;
    if (cmd === Cmd.Begin) open = [];
    else if (cmd === Cmd.Continue) open?.push(payload);
    else if (cmd === Cmd.Commit && open) whole.push(concat(open));
    else if (cmd === Cmd.Atomic) whole.push(payload);
    if (cmd !== Cmd.Begin && cmd !== Cmd.Continue) open = undefined;
  }
  return whole;
}

/** True if `seen` is `whole` with some (or none) left out, in order. */
function isSubsequence(seen: readonly Uint8Array[], whole: readonly Uint8Array[]): boolean {
  let i = 0;
  for (const t of seen) {
    while (i < whole.length && !bytesEqual(whole[i], t)) i++;
    if (i === whole.length) return false;
    i++;
  }
  return true;
}

/** Feeds `bytes` to a fresh receiver in random pieces, then closes; returns its end code and what it delivered. */
async function feed(bytes: Uint8Array, random: () => number): Promise<{ code: string | undefined; seen: Uint8Array[] }> {
  const [senderEnd, receiverEnd] = memoryPair();
  const seen: Uint8Array[] = [];
  const receiver = new TransactionReceiver(receiverEnd, (t) => void seen.push(t.bytes()), { maxFramePayload: 4096, maxTransactionBytes: 8192 });
  receiver.open();
  for (let at = 0; at < bytes.length; ) {
    const n = 1 + Math.floor(random() * 200);
    senderEnd.write(bytes.slice(at, at + n), () => {});
    at += n;
  }
  // Closing at once would make the receiver's answers fail first (they go to a closed end) and
  // hide how it treats the end of the stream: let them through, then close.
  await new Promise((resolve) => setTimeout(resolve, 0));
  senderEnd.close();
  return { code: await rejectionCode(receiver.done), seen };
}

test("fuzz: corrupted headers end the session cleanly and never deliver a partial transaction", async () => {
  const random = seededRandom(77);
  const { stream, headerBytes, valid } = fuzzStream();
  assert.equal(framedAsWhole(stream), valid, "the oracle reads the undamaged stream as it was sent");
  for (let run = 0; run < FUZZ_RUNS; run++) {
    const bytes = stream.slice();
    for (let i = 1 + Math.floor(random() * 3); i > 0; i--) {
      bytes[headerBytes[Math.floor(random() * headerBytes.length)]] = Math.floor(random() * 256);
    }
    const { code, seen } = await feed(bytes, random);
    assert.ok(code === undefined || STREAM_ERRORS.includes(code), `run ${run}: ${code}`);
    const whole = framedAsWhole(bytes);
    assert.ok(isSubsequence(seen, whole), `run ${run}: delivered a transaction the bytes do not frame as whole`);
    // A session that ended cleanly found every frame valid, so it delivered all of them. (A
    // corrupted header can still make valid frames: COMMIT turned into CANCEL is one.)
    if (code === undefined) assert.ok(seen.length === whole.length, `run ${run}: ended cleanly without delivering every transaction`);
  }
});

test("fuzz: corruption anywhere, payloads included, never crashes, hangs or passes the limits", async () => {
  const random = seededRandom(78);
  const { stream } = fuzzStream();
  for (let run = 0; run < FUZZ_RUNS; run++) {
    const bytes = stream.slice();
    for (let i = 1 + Math.floor(random() * 4); i > 0; i--) bytes[Math.floor(random() * bytes.length)] = Math.floor(random() * 256);
    const cut = random() < 0.3 ? Math.floor(random() * bytes.length) : bytes.length;
    const { code, seen } = await feed(bytes.subarray(0, cut), random);
    assert.ok(code === undefined || STREAM_ERRORS.includes(code), `run ${run}: ${code}`);
    assert.ok(seen.every((t) => t.length <= 8192), `run ${run}: a transaction over maxTransactionBytes was delivered`);
    assert.ok(isSubsequence(seen, framedAsWhole(bytes.subarray(0, cut))), `run ${run}: delivered a transaction the bytes do not frame as whole`);
  }
});

test.run();
