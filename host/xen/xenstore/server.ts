/**
 * A xenstored on a Unix socket: the xs_wire protocol through `node:net` (which Deno and Bun
 * provide too), for Debian's xenstore-utils (`XENSTORED_PATH=PATH xenstore-read ...`) and for
 * frontends in other processes. Each connection is one {@link XenStoreConnection}, as domain 0
 * unless told otherwise.
 *
 * A connection that sends a header with a length over XENSTORE_PAYLOAD_MAX gets an E2BIG error
 * and is closed: the stream cannot be resynchronised after it. Any other bad message gets an
 * ERROR reply and the connection goes on. Nothing a client sends stops the server or touches
 * another client.
 */

import * as fs from "node:fs";
import * as net from "node:net";
import { ErrorCode, TandemError } from "../../errors.ts";
import { claimSocketPath } from "../../runtime/socket-file.ts";
import { errorReply, handleRequest, watchEventMessage } from "./requests.ts";
import { XenStore } from "./store.ts";
import { XsDecoder, encodeMessage, type XsMessage } from "./wire.ts";

/** How a server is set up. */
export interface XenStoreServerOptions {
  /** The store to serve; a new empty one by default. */
  store?: XenStore;
  /** The domain each connection acts as (default 0, privileged); tests pick others. */
  domid?: number;
  /**
   * Bytes of replies and events a client may leave unread. Past it, reading its requests waits
   * for it to catch up; a watch event past twice this closes the connection (it is not reading).
   */
  maxPendingOutputBytes?: number;
  /** Told of each connection accepted (for metrics). */
  onConnection?: () => void;
  /** Told of each request answered, with its reply (for metrics). */
  onRequest?: (request: XsMessage, reply: XsMessage) => void;
}

/** A listening xenstored. */
export interface XenStoreServer {
  /** The socket's path. */
  readonly path: string;
  /** The store it serves. */
  readonly store: XenStore;
  /** Open connections. */
  readonly connectionCount: number;
  /** Closes every connection, stops listening and removes the socket file. */
  close(): Promise<void>;
}

const DEFAULT_MAX_PENDING_OUTPUT = 256 * 1024;

/** Listens on the Unix socket `path`, replacing a stale socket file left by a dead server. */
export async function serveXenStore(path: string, options: XenStoreServerOptions = {}): Promise<XenStoreServer> {
  const store = options.store ?? new XenStore();
  const domid = options.domid ?? 0;
  const maxPending = options.maxPendingOutputBytes ?? DEFAULT_MAX_PENDING_OUTPUT;
  await claimSocketPath(path);
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    options.onConnection?.();
    serveConnection(socket, store, domid, maxPending, options.onRequest);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", (error) => reject(new TandemError(ErrorCode.BadArgument, `cannot listen on ${path}: ${error.message}`)));
    server.listen(path, () => resolve());
  });
  let closing: Promise<void> | undefined;
  return {
    path,
    store,
    get connectionCount() {
      return sockets.size;
    },
    close() {
      closing ??= new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => {
          fs.rmSync(path, { force: true });
          resolve();
        });
      });
      return closing;
    },
  };
}

function serveConnection(socket: net.Socket, store: XenStore, domid: number, maxPending: number, onRequest: XenStoreServerOptions["onRequest"]): void {
  const connection = store.connect(domid);
  const decoder = new XsDecoder();
  let waitingForDrain = false;

  const send = (bytes: Uint8Array) => {
    if (!socket.destroyed) socket.write(bytes);
  };
  const onWatchEvent = (path: string, token: string) => {
    if (socket.destroyed) return;
    if (socket.writableLength > 2 * maxPending) {
      socket.destroy();
      return;
    }
    send(encodeMessage(watchEventMessage(path, token)));
  };
  const answer = () => {
    while (!waitingForDrain && !socket.destroyed) {
      if (socket.writableLength > maxPending) {
        // The client is not reading its replies: stop reading its requests until it does.
        waitingForDrain = true;
        socket.pause();
        socket.once("drain", () => {
          waitingForDrain = false;
          socket.resume();
          answer();
        });
        return;
      }
      const decoded = decoder.next();
      if (decoded === undefined) return;
      if ("oversized" in decoded) {
        send(encodeMessage(errorReply(decoded.oversized, "E2BIG")));
        socket.end();
        socket.setTimeout(1000, () => socket.destroy());
        connection.close();
        return;
      }
      const reply = handleRequest(connection, decoded.message, onWatchEvent);
      onRequest?.(decoded.message, reply);
      send(encodeMessage(reply));
    }
  };

  socket.on("data", (chunk: Uint8Array) => {
    decoder.push(chunk);
    answer();
  });
  // A reset by the peer is its business; the connection just ends.
  socket.on("error", () => socket.destroy());
  socket.once("close", () => connection.close());
}
