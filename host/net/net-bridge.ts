/**
 * Joins a running guest's network card to the network link, on whichever side of the pair runs
 * the guest. Frames the guest sends arrive here only once released (their checkpoint was
 * acknowledged, or the side runs alone); frames from the network go to the card.
 *
 * A standby that takes over starts releasing (the last checkpoint's frames again, then whatever
 * its guest sends) a moment before its own link to the network is connected: those frames wait
 * here, bounded, and go out in order once {@link NetBridge.attach} is called.
 */

import type { NetLink } from "./net-link.ts";

/** What takes frames for the guest: its network card. */
export interface FrameSink {
  receive(frame: Uint8Array): void;
}

/** Frames kept while no link is attached (a takeover connects within milliseconds). */
const MAX_WAITING_FRAMES = 1024;

/** The bridge between a guest's card and the network. */
export class NetBridge {
  readonly #card: FrameSink;
  #link: NetLink | undefined;
  #waiting: Uint8Array[] = [];
  /** Released frames dropped because no link came in time. */
  dropped = 0;

  constructor(card: FrameSink) {
    this.#card = card;
  }

  /** The link in use, if any. */
  get link(): NetLink | undefined {
    return this.#link;
  }

  /** Sends released frames to `link` from now on (waiting ones first), and its frames to the card. */
  attach(link: NetLink): void {
    this.#link = link;
    link.onFrame((frame) => this.#card.receive(frame));
    const waiting = this.#waiting;
    this.#waiting = [];
    for (const frame of waiting) link.send(frame);
  }

  /** Stops using the link (it is not closed here). */
  detach(): void {
    this.#link?.onFrame(() => {});
    this.#link = undefined;
  }

  /** A frame the guest sent, released by output commit: to the network, or waiting for a link. */
  release(frame: Uint8Array): void {
    if (this.#link && !this.#link.closed) {
      this.#link.send(frame);
    } else if (this.#waiting.length < MAX_WAITING_FRAMES) {
      this.#waiting.push(frame);
    } else {
      this.dropped++;
    }
  }
}
