/**
 * The running side's connection to the network: a Unix (or TCP) socket to passt, or to anything
 * else that speaks QEMU's stream framing, carrying the guest's Ethernet frames both ways.
 *
 * Frames to the network are written as they are given: by the time a frame reaches the link it
 * has passed output commit (the replication engine released it). Like a NIC's queue, the link
 * holds a bounded amount; past it a frame is dropped and counted, and the guest's TCP resends.
 */

import * as net from "node:net";
import { ErrorCode, TandemError } from "../errors.ts";
import { encodeFrame, FrameStreamDecoder } from "./frame-stream.ts";

/** Where the network listens: passt's Unix socket, or a TCP port. */
export type NetAddress = { path: string } | { port: number; host?: string };

/** Counters of a {@link NetLink}. */
export interface NetLinkStats {
  framesOut: number;
  bytesOut: number;
  framesIn: number;
  bytesIn: number;
  /** Frames to the network dropped because the socket was not draining. */
  dropped: number;
}

/** Bytes queued on the socket beyond which frames to the network are dropped. */
const MAX_QUEUED_BYTES = 4 << 20;

/** A connected frame link. */
export class NetLink {
  readonly stats: NetLinkStats = { framesOut: 0, bytesOut: 0, framesIn: 0, bytesIn: 0, dropped: 0 };
  readonly #socket: net.Socket;
  readonly #decoder = new FrameStreamDecoder();
  #onFrame: (frame: Uint8Array) => void = () => {};
  #onClose: (error?: Error) => void = () => {};
  #closed = false;

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    socket.on("data", (chunk: Uint8Array) => this.#data(chunk));
    socket.on("error", (error) => this.#ended(error));
    socket.on("close", () => this.#ended());
  }

  /**
   * Connects to the network at `address`; rejects E_NET_UNAVAILABLE naming it. passt serves one
   * client at a time and listens with no backlog, so while it is still letting go of the previous
   * client (a primary that just died) a connect is refused (EAGAIN; ECONNREFUSED on Bun): that
   * is retried for up to `retryMs` (default 3000).
   */
  static async connect(address: NetAddress, options: { retryMs?: number } = {}): Promise<NetLink> {
    const deadline = performance.now() + (options.retryMs ?? 3000);
    for (;;) {
      try {
        return await NetLink.#connectOnce(address);
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        const busy = code === "EAGAIN" || code === "ECONNREFUSED";
        if (!busy || performance.now() > deadline) {
          const where = "path" in address ? address.path : `${address.host ?? "127.0.0.1"}:${address.port}`;
          throw new TandemError(ErrorCode.NetUnavailable, `cannot connect to the network at ${where}: ${(error as Error).message}`);
        }
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    }
  }

  static #connectOnce(address: NetAddress): Promise<NetLink> {
    return new Promise((resolve, reject) => {
      const socket = "path" in address ? net.connect({ path: address.path }) : net.connect({ port: address.port, host: address.host ?? "127.0.0.1" });
      socket.once("error", reject);
      socket.once("connect", () => {
        socket.off("error", reject);
        if ("port" in address) socket.setNoDelay(true);
        resolve(new NetLink(socket));
      });
    });
  }

  /** Where frames from the network go (the running machine's NIC). */
  onFrame(sink: (frame: Uint8Array) => void): void {
    this.#onFrame = sink;
  }

  /** Called once when the link ends, with the error if it broke. */
  onClose(sink: (error?: Error) => void): void {
    this.#onClose = sink;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Sends one frame to the network; returns false if it was dropped (link closed or not draining). */
  send(frame: Uint8Array): boolean {
    if (this.#closed || this.#socket.writableLength > MAX_QUEUED_BYTES) {
      this.stats.dropped++;
      return false;
    }
    this.#socket.write(encodeFrame(frame));
    this.stats.framesOut++;
    this.stats.bytesOut += frame.length;
    return true;
  }

  /** Hangs up; passt then accepts the next client. */
  close(): void {
    if (!this.#socket.destroyed) this.#socket.destroy();
  }

  #data(chunk: Uint8Array): void {
    let frames: Uint8Array[];
    try {
      frames = this.#decoder.push(chunk);
    } catch (error) {
      this.#socket.destroy(error as Error);
      return;
    }
    for (const frame of frames) {
      this.stats.framesIn++;
      this.stats.bytesIn += frame.length;
      this.#onFrame(frame);
    }
  }

  #ended(error?: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#onClose(error);
  }
}
