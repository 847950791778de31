/**
 * An NBD server (proto.md) for one tandem disk, on TCP (loopback by default) or a Unix socket,
 * through node:net so it runs on Node, Deno and Bun. Each connection runs the handshake state
 * machine, then transmission; a connection that misbehaves is answered with the protocol's
 * errors or closed, never affecting the others or the image.
 */

import { existsSync, rmSync } from "node:fs";
import * as net from "node:net";
import type { Disk } from "../disk/disk.ts";
import { claimSocketPath } from "../runtime/socket-file.ts";
import { Handshake, type ExportDescription, type Want } from "./handshake.ts";
import { InputQueue } from "./input-queue.ts";
import { MAX_PAYLOAD, Transmission } from "./transmission.ts";

/** Where to listen: a TCP port (0 picks a free one) on `host`, or a Unix socket path. */
export type NbdAddress = { port: number; host?: string } | { path: string };

/** Log levels: `info` for lifecycle and checkpoints, `verbose` for connections, `debug` for protocol detail and refused requests. */
export type NbdLogLevel = "info" | "verbose" | "debug";
/** Where the server reports. */
export type NbdLog = (level: NbdLogLevel, message: string) => void;

/** How to serve. */
export interface NbdServerOptions {
  /** The disk to export; the server does not close it. */
  disk: Disk;
  /** The export's name ("" is the default export; the empty name always selects it). */
  exportName?: string;
  /** Shown to clients that ask (NBD_INFO_DESCRIPTION). */
  description?: string;
  log?: NbdLog;
  /** Told of each connection accepted (for metrics). */
  onConnection?: () => void;
  /** Told of each request answered: its command, how long it took, whether it failed (for metrics). */
  onRequest?: (command: number, ms: number, failed: boolean) => void;
}

/** Replies waiting unsent beyond this pause reading from the client, bounding what a client keeps in flight. */
export const MAX_PENDING_REPLY_BYTES = 2 * MAX_PAYLOAD;
/** On close, connections still sending replies after this are cut. */
const CLOSE_GRACE_MS = 5000;
const DEFAULT_HOST = "127.0.0.1";

/** A running server. */
export class NbdServer {
  readonly #listener: net.Server;
  readonly #disk: Disk;
  readonly #export: ExportDescription;
  readonly #log: NbdLog;
  readonly #onConnection: NbdServerOptions["onConnection"];
  readonly #onRequest: NbdServerOptions["onRequest"];
  readonly #connections = new Set<NbdConnection>();
  #nextId = 1;
  #closing: Promise<void> | null = null;
  /** The bound address: `{ host, port }` for TCP, `{ path }` for a Unix socket. */
  readonly address: { host: string; port: number } | { path: string };

  private constructor(listener: net.Server, options: NbdServerOptions, address: NbdServer["address"]) {
    this.#listener = listener;
    this.#disk = options.disk;
    this.#log = options.log ?? (() => {});
    this.#onConnection = options.onConnection;
    this.#onRequest = options.onRequest;
    this.#export = {
      name: options.exportName ?? "",
      description: options.description ?? "",
      size: options.disk.size,
      readOnly: options.disk.readOnly,
      maxPayload: MAX_PAYLOAD,
    };
    this.address = address;
    listener.on("connection", (socket) => this.#accept(socket));
  }

  /** Starts listening. */
  static async listen(options: NbdServerOptions, where: NbdAddress): Promise<NbdServer> {
    const listener = net.createServer({ noDelay: true });
    // A socket left by a server that died is replaced; a live one or any other file is refused.
    if ("path" in where) await claimSocketPath(where.path);
    await new Promise<void>((resolve, reject) => {
      listener.once("error", reject);
      if ("path" in where) listener.listen(where.path, resolve);
      else listener.listen(where.port, where.host ?? DEFAULT_HOST, resolve);
    });
    listener.on("error", (error) => options.log?.("info", `listener error: ${error.message}`));
    let address: NbdServer["address"];
    if ("path" in where) address = { path: where.path };
    else {
      const bound = listener.address() as net.AddressInfo;
      address = { host: where.host ?? DEFAULT_HOST, port: bound.port };
    }
    return new NbdServer(listener, options, address);
  }

  /** Connections open now. */
  get connectionCount(): number {
    return this.#connections.size;
  }

  /** A URI for QEMU and libnbd clients: nbd://HOST:PORT/NAME or nbd+unix:///NAME?socket=PATH. */
  get uri(): string {
    const name = encodeURIComponent(this.#export.name);
    if ("path" in this.address) return `nbd+unix:///${name}?socket=${this.address.path}`;
    const host = this.address.host.includes(":") ? `[${this.address.host}]` : this.address.host;
    return `nbd://${host}:${this.address.port}/${name}`;
  }

  /** A checkpoint: every write acknowledged so far is made durable (flush), and the log says so. */
  checkpoint(): void {
    const started = performance.now();
    this.#disk.flush();
    this.#log("info", `checkpoint: ${this.#disk.format} disk flushed, all mappings durable (${(performance.now() - started).toFixed(1)} ms, ${this.#connections.size} clients)`);
  }

  /**
   * Stops accepting, lets every connection finish the requests it has sent (and send their
   * replies), closes them, flushes the disk. Idempotent.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      const stopped = new Promise<void>((resolve) => this.#listener.close(() => resolve()));
      await Promise.all([...this.#connections].map((c) => c.finish(CLOSE_GRACE_MS)));
      await stopped;
      if (!this.#disk.readOnly) this.#disk.flush();
      if ("path" in this.address && existsSync(this.address.path)) rmSync(this.address.path, { force: true });
    })();
    return this.#closing;
  }

  #accept(socket: net.Socket): void {
    if (this.#closing !== null) {
      socket.destroy();
      return;
    }
    const id = this.#nextId++;
    this.#onConnection?.();
    const connection = new NbdConnection(socket, this.#disk, this.#export, (level, message) => this.#log(level, `client ${id}: ${message}`), this.#onRequest);
    this.#connections.add(connection);
    this.#log("verbose", `client ${id}: connected (${socket.remoteAddress ?? "unix socket"})`);
    connection.closed.then(() => {
      this.#connections.delete(connection);
      this.#log("verbose", `client ${id}: disconnected`);
    });
  }
}

/** One client: its input bytes, its protocol phase, its output. */
class NbdConnection {
  readonly #socket: net.Socket;
  readonly #disk: Disk;
  readonly #input = new InputQueue();
  readonly #log: NbdLog;
  readonly #onRequest: NbdServerOptions["onRequest"];
  #phase: Handshake | Transmission;
  #outbox: Uint8Array[] = [];
  #ending = false;
  #pumping = false;
  /** Settles when the socket has closed. */
  readonly closed: Promise<void>;

  constructor(socket: net.Socket, disk: Disk, exportDescription: ExportDescription, log: NbdLog, onRequest: NbdServerOptions["onRequest"]) {
    this.#socket = socket;
    this.#disk = disk;
    this.#log = log;
    this.#onRequest = onRequest;
    socket.setNoDelay?.(true);
    this.closed = new Promise((resolve) => socket.once("close", () => resolve()));
    socket.on("error", (error) => log("verbose", `socket error: ${error.message}`));
    socket.on("data", (chunk: Uint8Array) => {
      this.#input.push(chunk);
      this.#pump();
    });
    socket.on("drain", () => {
      if (!this.#ending) socket.resume();
      this.#pump();
    });
    socket.on("end", () => {
      if (this.#input.length > 0) log("verbose", `disconnected with ${this.#input.length} bytes of an unfinished request: discarded`);
      this.#input.clear();
      this.#end();
    });
    this.#phase = new Handshake(exportDescription, (bytes) => this.#outbox.push(bytes));
    this.#flushOutbox();
  }

  /** Stops reading new requests, sends the replies already due, then closes (cut after `graceMs`). */
  finish(graceMs: number): Promise<void> {
    this.#socket.pause();
    this.#input.clear();
    this.#end();
    const timer = setTimeout(() => this.#socket.destroy(), graceMs);
    return this.closed.then(() => clearTimeout(timer));
  }

  /** Handles every complete message waiting, as long as the replies waiting unsent stay bounded. */
  #pump(): void {
    if (this.#pumping || this.#ending) return;
    this.#pumping = true;
    try {
      // Each turn consumes input or ends the loop, so the loop is bounded by the bytes received.
      for (;;) {
        if (this.#socket.writableLength > MAX_PENDING_REPLY_BYTES) {
          this.#socket.pause();
          break;
        }
        const want: Want = this.#phase.wants();
        if (want.kind === "read") {
          const bytes = this.#input.take(want.bytes);
          if (bytes === null) break;
          this.#phase.receive(bytes);
        } else if (want.kind === "skip") {
          const dropped = this.#input.drop(want.bytes);
          if (dropped === 0) break;
          this.#phase.skipped(dropped);
        } else if (want.kind === "transmission") {
          this.#log("debug", `handshake done (structured replies ${want.negotiated.structuredReplies ? "on" : "off"}, base:allocation ${want.negotiated.baseAllocationId !== 0 ? "on" : "off"})`);
          this.#phase = new Transmission(this.#disk, want.negotiated, (bytes) => this.#outbox.push(bytes), {
            error: (command, error, message) => this.#log("debug", `command ${command} failed with error ${error}: ${message}`),
            done: this.#onRequest,
          });
        } else {
          this.#log("debug", `closing: ${want.reason}`);
          this.#end();
          break;
        }
      }
    } finally {
      this.#pumping = false;
      this.#flushOutbox();
    }
  }

  #flushOutbox(): void {
    if (this.#outbox.length === 0 || this.#socket.destroyed) {
      this.#outbox = [];
      return;
    }
    const replies = this.#outbox;
    this.#outbox = [];
    this.#socket.cork();
    for (const reply of replies) this.#socket.write(reply);
    this.#socket.uncork();
  }

  #end(): void {
    if (this.#ending) return;
    this.#ending = true;
    this.#flushOutbox();
    this.#socket.end();
  }
}
