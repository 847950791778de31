/**
 * A TCP proxy on loopback that can be cut and healed, to partition a process from a server (an
 * etcd member, a primary's replication port) without touching either: `tandem demo --witness`
 * and the tests use it. Cut, it blackholes: open connections stop carrying
 * bytes either way and new ones are accepted but carry nothing, as with a dropped route (the
 * client only notices by its timeouts). Healed, new connections work again; the blackholed ones
 * stay dead, as a real client's would after its timeouts.
 */

import * as net from "node:net";

/** A running proxy. */
export interface TcpProxy {
  /** The port clients connect to. */
  readonly port: number;
  /** Client URL for an HTTP server behind it. */
  readonly url: string;
  /** Blackholes every connection, open and new. */
  cut(): void;
  /** Lets new connections through again. */
  heal(): void;
  /** Closes the proxy and every connection. */
  close(): Promise<void>;
}

/** Starts a proxy on a free loopback port to `targetPort` on 127.0.0.1. */
export function startTcpProxy(targetPort: number): Promise<TcpProxy> {
  let cut = false;
  const pairs = new Set<{ client: net.Socket; server: net.Socket | undefined; dead: boolean }>();
  const server = net.createServer((client) => {
    const pair: { client: net.Socket; server: net.Socket | undefined; dead: boolean } = { client, server: undefined, dead: cut };
    pairs.add(pair);
    client.on("error", () => {});
    client.on("close", () => {
      pair.server?.destroy();
      pairs.delete(pair);
    });
    if (pair.dead) return; // accepted, never answered
    const upstream = net.connect(targetPort, "127.0.0.1");
    pair.server = upstream;
    upstream.on("error", () => client.destroy());
    upstream.on("close", () => {
      if (!pair.dead) client.destroy();
    });
    client.on("data", (chunk) => {
      if (!pair.dead) upstream.write(chunk);
    });
    upstream.on("data", (chunk) => {
      if (!pair.dead) client.write(chunk);
    });
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as net.AddressInfo).port;
      resolve({
        port,
        url: `http://127.0.0.1:${port}`,
        cut() {
          cut = true;
          for (const pair of pairs) pair.dead = true;
        },
        heal() {
          cut = false;
        },
        close() {
          for (const pair of pairs) {
            pair.client.destroy();
            pair.server?.destroy();
          }
          return new Promise<void>((done) => server.close(() => done()));
        },
      });
    });
  });
}
