/**
 * The far end of the TCP bench, run in its own process (as a standby would be):
 *
 *   tcp-peer.ts raw <bytes>           counts each connection's bytes; after <bytes>, answers one byte
 *   tcp-peer.ts transactions          a TransactionReceiver per connection; transactions are counted
 *
 * Prints `PORT <n>` when listening on 127.0.0.1, then serves until killed.
 */

import * as net from "node:net";
import { TransactionReceiver } from "../host/protocol/receiver.ts";
import { listen } from "../host/protocol/socket-transport.ts";

const [mode, bytes] = process.argv.slice(2);
if (mode === "raw") {
  const total = Number(bytes);
  const server = net.createServer((socket) => {
    socket.setNoDelay(true);
    let received = 0;
    socket.on("data", (chunk: Uint8Array) => {
      received += chunk.length;
      if (received === total) socket.write(new Uint8Array([1]));
    });
    socket.on("error", () => {});
  });
  server.listen(0, "127.0.0.1", () => console.log(`PORT ${(server.address() as net.AddressInfo).port}`));
} else if (mode === "transactions") {
  const server = await listen({ port: 0 }, (transport) => {
    const receiver = new TransactionReceiver(transport, () => {});
    receiver.done.catch(() => {});
    receiver.open();
  });
  console.log(`PORT ${"port" in server.address ? server.address.port : 0}`);
} else {
  console.error("usage: tcp-peer.ts raw <bytes> | transactions");
  process.exit(2);
}
