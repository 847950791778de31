/**
 * The bytes a connection has received and not yet consumed, as the chunks the socket delivered:
 * a message lying inside one chunk is handed out as a view, without copying.
 */

import { Buffer } from "node:buffer";

/** Received bytes, consumed front first. */
export class InputQueue {
  #chunks: Uint8Array[] = [];
  #length = 0;

  /** Bytes waiting. */
  get length(): number {
    return this.#length;
  }

  /** Appends a received chunk. */
  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.#length += chunk.length;
  }

  /** The next `count` bytes, consumed; null (consuming nothing) while fewer are waiting. */
  take(count: number): Uint8Array | null {
    if (count > this.#length) return null;
    const first = this.#chunks[0];
    if (count === 0) return new Uint8Array(0);
    if (first.length >= count) {
      this.#consumeFront(count);
      return first.subarray(0, count);
    }
    const out = Buffer.allocUnsafe(count);
    let filled = 0;
    while (filled < count) {
      const chunk = this.#chunks[0];
      const n = Math.min(chunk.length, count - filled);
      out.set(chunk.subarray(0, n), filled);
      filled += n;
      this.#consumeFront(n);
    }
    return out;
  }

  /** Discards up to `count` bytes; returns how many were discarded. */
  drop(count: number): number {
    let dropped = 0;
    while (dropped < count && this.#chunks.length > 0) {
      const n = Math.min(this.#chunks[0].length, count - dropped);
      this.#consumeFront(n);
      dropped += n;
    }
    return dropped;
  }

  /** Forgets everything waiting. */
  clear(): void {
    this.#chunks = [];
    this.#length = 0;
  }

  #consumeFront(count: number): void {
    const first = this.#chunks[0];
    if (count === first.length) this.#chunks.shift();
    else this.#chunks[0] = first.subarray(count);
    this.#length -= count;
  }
}
