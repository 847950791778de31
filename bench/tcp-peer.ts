/**
 * The far end of the TCP bench, run in its own process (as a standby would be):
 *
 *   tcp-peer.ts <bytes>
 *
 * listens on two loopback ports and prints `PORT <raw> <transactions>`, then serves until killed:
 *   raw           counts each connection's bytes; after every <bytes>, answers one byte
 *   transactions  a TransactionReceiver per connection; transactions are counted
 *
 * One process serves both so that a transaction run and the raw run it is compared with reach the
 * same receiving process: two processes running the same code measured up to twice as far apart
 * on this kind of machine as two connections to one process.
 */

import * as net from "node:net";
import { TransactionReceiver } from "../host/protocol/receiver.ts";
import { listen } from "../host/protocol/socket-transport.ts";

const total = Number(process.argv[2]);
if (!Number.isSafeInteger(total) || total <= 0) {
  console.error("usage: tcp-peer.ts <bytes per raw connection>");
  process.exit(2);
}
const raw = net.createServer((socket) => {
  socket.setNoDelay(true);
  let received = 0;
  socket.on("data", (chunk: Uint8Array) => {
    received += chunk.length;
    if (received >= total) {
      received -= total;
      socket.write(new Uint8Array([1]));
    }
  });
  socket.on("error", () => {});
});
await new Promise<void>((resolve) => raw.listen(0, "127.0.0.1", () => resolve()));
const transactions = await listen({ port: 0 }, (transport) => {
  const receiver = new TransactionReceiver(transport, () => {});
  receiver.done.catch(() => {});
  receiver.open();
});
const rawPort = (raw.address() as net.AddressInfo).port;
const transactionsPort = "port" in transactions.address ? transactions.address.port : 0;
console.log(`PORT ${rawPort} ${transactionsPort}`);
