import { suite } from "uvu";
import * as assert from "uvu/assert";
import { mkdtempSync, rmSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ErrorCode } from "../host/errors.ts";
import { TransactionReceiver } from "../host/protocol/receiver.ts";
import { TransactionSender } from "../host/protocol/sender.ts";
import { connect, listen, type SocketAddress, type SocketTransport } from "../host/protocol/socket-transport.ts";
import { bytesEqual } from "./support/flavors.ts";
import { pattern, rejectionCode } from "./support/session.ts";

const test = suite("sessions over TCP and Unix sockets");
const dir = mkdtempSync(join(tmpdir(), "tandem-sock-"));

/** Listens, connects, and wires a receiver (server side) to a sender (client side). */
async function pair(address: SocketAddress, seen: Uint8Array[]) {
  let accepted!: (t: SocketTransport) => void;
  const serverSide = new Promise<SocketTransport>((resolve) => (accepted = resolve));
  const server = await listen(address, (t) => accepted(t));
  const client = await connect(server.address);
  const receiver = new TransactionReceiver(await serverSide, (t) => void seen.push(t.bytes()));
  const sender = new TransactionSender(client);
  receiver.open();
  await sender.open();
  return { server, client, sender, receiver };
}

for (const [name, address] of [["TCP loopback", { port: 0 }], ["Unix socket", { path: join(dir, "s") }]] as const) {
  test(`${name}: transactions of 0 bytes to 3 MiB arrive whole`, async () => {
    const seen: Uint8Array[] = [];
    const { server, sender, receiver } = await pair(address, seen);
    const sizes = [0, 1, 4096, 1 << 20, 3 << 20];
    for (const [i, size] of sizes.entries()) {
      await sender.begin();
      const body = pattern(size, i + 1);
      for (let at = 0; at < size || at === 0; at += 65536) {
        await sender.write(body.subarray(at, at + 65536));
        if (size === 0) break;
      }
      await sender.commit();
    }
    await sender.atomic(pattern(100, 9));
    assert.equal(seen.map((b) => b.length), [...sizes, 100]);
    sizes.forEach((size, i) => assert.equal(seen[i], pattern(size, i + 1), `transaction ${i}`));
    sender.close();
    await receiver.done;
    await server.close();
  });

  test(`${name}: pipelined writeNoCopy transactions, faster than the socket drains, arrive whole and in order`, async () => {
    const seen: Uint8Array[] = [];
    let accepted!: (t: SocketTransport) => void;
    const serverSide = new Promise<SocketTransport>((resolve) => (accepted = resolve));
    const server = await listen(address, (t) => accepted(t));
    const sender = new TransactionSender(await connect(server.address), { window: 4 });
    const receiver = new TransactionReceiver(await serverSide, (t) => void seen.push(t.bytes()));
    receiver.open();
    await sender.open();
    // 1 MiB each, in four 256 KiB writes sent from the caller's bytes: far more than the socket
    // takes at once, so batches are cut short and the sender waits for the kernel between them.
    const bodies = Array.from({ length: 12 }, (_, i) => pattern(1 << 20, 20 + i));
    const commits: Promise<void>[] = [];
    for (const body of bodies) {
      if (commits.length === 4) await commits.shift();
      await sender.begin();
      for (let at = 0; at < body.length; at += 256 * 1024) await sender.writeNoCopy(body.subarray(at, at + 256 * 1024));
      commits.push(sender.commit());
    }
    await Promise.all(commits);
    assert.is(sender.stats.acked, bodies.length);
    assert.is(seen.length, bodies.length);
    bodies.forEach((body, i) => assert.equal(seen[i], body, `transaction ${i}`));
    sender.close();
    await receiver.done;
    await server.close();
  });
}

test("batch() reports when the kernel stops taking bytes; everything batched still arrives whole and in order", async () => {
  // A peer that does not read yet, so the socket's buffers fill. Node and Deno send each batch as
  // one writev; Bun, whose cork would copy it, as separate writes: both must keep the order.
  let accepted!: (socket: net.Socket) => void;
  const peerSocket = new Promise<net.Socket>((resolve) => (accepted = resolve));
  const server = net.createServer((socket) => {
    socket.pause();
    accepted(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  const transport = await connect({ port: (server.address() as net.AddressInfo).port });
  const peer = await peerSocket;
  const payload = pattern(256 * 1024, 7);
  const header = (i: number) => new Uint8Array(12).fill(i + 1);
  let written = 0;
  let failed: Error | undefined;
  const done = (error?: Error) => {
    written++;
    failed ??= error;
  };
  let batches = 0;
  let more = true;
  while (more && batches < 255) { // 64 MiB at most: far past what loopback buffers hold
    const i = batches++;
    more = transport.batch(() => {
      transport.write(header(i), done);
      return transport.write(payload, done);
    });
  }
  assert.not.ok(more, `the transport took ${batches} batches of 256 KiB without saying "wait"`);
  const frame = 12 + payload.length;
  const received = new Uint8Array(batches * frame);
  let at = 0;
  await new Promise<void>((resolve) => {
    peer.on("data", (chunk: Uint8Array) => {
      received.set(chunk.subarray(0, received.length - at), at);
      at += chunk.length;
      if (at >= received.length) resolve();
    });
    peer.resume();
  });
  assert.is(at, received.length);
  for (let i = 0; i < batches; i++) {
    assert.equal(received.subarray(i * frame, i * frame + 12), header(i), `header ${i}`);
    assert.ok(bytesEqual(received.subarray(i * frame + 12, (i + 1) * frame), payload), `payload ${i}`);
  }
  for (let waits = 0; written < 2 * batches && waits < 1000; waits++) await new Promise((resolve) => setTimeout(resolve, 5));
  assert.is(written, 2 * batches, "every write reported done");
  assert.is(failed, undefined);
  transport.close();
  peer.destroy();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

test("connecting where nobody listens is E_PEER_CLOSED", async () => {
  assert.is(await rejectionCode(connect({ path: join(dir, "nobody") })), ErrorCode.PeerClosed);
});

test("a sender whose connection drops mid-transaction: the receiver ends with a code, nothing delivered", async () => {
  const seen: Uint8Array[] = [];
  const { server, client, sender, receiver } = await pair({ port: 0 }, seen);
  await sender.begin();
  await sender.write(pattern(600_000, 3)); // two buffers go out; the rest waits for COMMIT
  client.close();
  const code = await rejectionCode(receiver.done);
  assert.ok(code === ErrorCode.PeerClosed || code === ErrorCode.RecvHeader || code === ErrorCode.RecvPayload, String(code));
  assert.is(seen.length, 0);
  await server.close();
});

test.after(() => rmSync(dir, { recursive: true, force: true }));

test.run();
