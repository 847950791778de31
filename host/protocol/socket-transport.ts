/**
 * Transports over TCP and Unix sockets, through `node:net` (which Deno and Bun provide too).
 */

import * as net from "node:net";
import { ErrorCode, TandemError } from "../errors.ts";
import { runtimeName } from "../runtime/runtime.ts";
import { claimSocketPath } from "../runtime/socket-file.ts";
import { tracerFor, type Tracer } from "../trace.ts";
import { TransportBase, closedError } from "./transport.ts";

/** Where to listen or connect: a TCP port (loopback by default) or a Unix socket path. */
export type SocketAddress = { port: number; host?: string } | { path: string };

/**
 * Whether a batch is corked. Node and Deno send a corked batch as one writev. Bun's cork copies
 * the batch into one new buffer first: for a header and a 256 KiB payload that copy cost ~18% of
 * loopback throughput, where sending the header on its own cost nothing measurable.
 */
const CORK_BATCHES = runtimeName() !== "bun";

/** A transport over a connected socket. */
export class SocketTransport extends TransportBase {
  readonly #socket: net.Socket;
  readonly #trace: Tracer | undefined;

  constructor(socket: net.Socket) {
    super();
    this.#socket = socket;
    this.#trace = tracerFor("transport");
    // Frames are already batched into large writes; Nagle would only delay COMMITs and ACKs.
    if (socket.remotePort !== undefined) socket.setNoDelay(true);
    socket.on("data", (chunk: Uint8Array) => this.deliver(chunk));
    socket.on("error", (error) => {
      this.#trace?.("error", { message: error.message });
      this.ended(error);
    });
    socket.on("close", () => this.ended());
  }

  write(chunk: Uint8Array, done: (error?: Error) => void): boolean {
    if (this.closed || this.#socket.destroyed) {
      queueMicrotask(() => done(closedError()));
      return false;
    }
    return this.#socket.write(chunk, (error) => done(error ?? undefined));
  }

  override batch(writes: () => boolean): boolean {
    if (!CORK_BATCHES) return super.batch(writes) && !this.#socket.destroyed;
    this.#socket.cork();
    try {
      writes();
    } finally {
      this.#socket.uncork();
    }
    // Uncorking wrote the batch (a writev); whatever the kernel did not take is still queued.
    const socket = this.#socket;
    return !socket.destroyed && socket.writableLength < socket.writableHighWaterMark;
  }

  close(): void {
    // end() sends what is queued, then FIN; destroy() is for when the peer will not read it.
    if (!this.#socket.destroyed) this.#socket.end(() => this.#socket.destroy());
  }
}

/** Connects to a listening tandem endpoint. */
export function connect(address: SocketAddress): Promise<SocketTransport> {
  return new Promise((resolve, reject) => {
    const socket = "path" in address
      ? net.connect({ path: address.path })
      : net.connect({ port: address.port, host: address.host ?? "127.0.0.1" });
    const failed = (error: Error) => reject(new TandemError(ErrorCode.PeerClosed, `cannot connect to ${describe(address)}: ${error.message}`));
    socket.once("error", failed);
    socket.once("connect", () => {
      socket.off("error", failed);
      resolve(new SocketTransport(socket));
    });
  });
}

/** A listening socket; each connection becomes a transport. */
export interface TransportServer {
  /** Where it listens; for TCP with port 0, the port the system chose. */
  readonly address: SocketAddress;
  /** Stops listening at once; open connections stay, and the promise settles when they have all ended. */
  close(): Promise<void>;
}

/**
 * Listens on `address`, calling `accept` with each connection. A stale socket file (nothing
 * accepts on it) is replaced; a live one is refused (runtime/socket-file.ts).
 */
export async function listen(address: SocketAddress, accept: (transport: SocketTransport) => void): Promise<TransportServer> {
  if ("path" in address) await claimSocketPath(address.path);
  return new Promise((resolve, reject) => {
    const server = net.createServer((socket) => accept(new SocketTransport(socket)));
    server.once("error", (error) => reject(new TandemError(ErrorCode.BadArgument, `cannot listen on ${describe(address)}: ${error.message}`)));
    const ready = () => {
      const bound = server.address();
      const actual: SocketAddress = "path" in address
        ? address
        : { host: address.host ?? "127.0.0.1", port: typeof bound === "object" && bound ? bound.port : address.port };
      resolve({ address: actual, close: () => new Promise<void>((done) => server.close(() => done())) });
    };
    if ("path" in address) server.listen(address.path, ready);
    else server.listen(address.port, address.host ?? "127.0.0.1", ready);
  });
}

function describe(address: SocketAddress): string {
  return "path" in address ? address.path : `${address.host ?? "127.0.0.1"}:${address.port}`;
}
