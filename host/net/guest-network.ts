/**
 * One host's end of a protected guest's network: the bridge from its card to passt, connected
 * while this host runs the guest and disconnected while it stands by. A pair's host calls
 * {@link GuestNetwork.up} whenever its guest starts running (a primary at start, a standby at
 * takeover) and {@link GuestNetwork.down} when it stops running it (a fenced primary); released
 * frames go through {@link GuestNetwork.release}.
 *
 * Where the network is: a passt this host starts when its guest first runs (and stops at
 * {@link GuestNetwork.close}), or a socket someone else serves (a passt the operator started,
 * or the one the other host of the pair started), which is how the standby reaches the network
 * its primary was on.
 */

import { NetBridge, type FrameSink } from "./net-bridge.ts";
import { NetLink } from "./net-link.ts";
import { startPasst, type Passt, type PasstOptions } from "./passt.ts";

/** Where a guest's network is. */
export type NetworkSpec =
  /** Start passt with these options (its socket: `socketPath`, or a private one). */
  | { kind: "passt"; passt: PasstOptions }
  /** Connect to whatever serves QEMU's stream framing at `path` (a running passt). */
  | { kind: "socket"; path: string };

/** What a {@link GuestNetwork} tells its host. */
export type NetworkEvent =
  | { event: "started"; socket: string; pid: number }
  | { event: "connected"; socket: string }
  | { event: "lost"; socket: string; reason: string }
  | { event: "unreachable"; socket: string; reason: string }
  | { event: "disconnected"; socket: string };

/** How long a lost link waits before connecting again. */
const RECONNECT_DELAY_MS = 1000;
/** How long a connect retries while passt lets go of the previous client (a dead primary). */
const CONNECT_RETRY_MS = 5000;

/** A guest's network on one host of a pair. */
export class GuestNetwork {
  readonly #bridge: NetBridge;
  readonly #spec: NetworkSpec;
  readonly #onEvent: (event: NetworkEvent) => void;
  #passt: Passt | undefined;
  #link: NetLink | undefined;
  /** Whether the guest runs here, so the link should be up. */
  #wanted = false;
  /** The pending connect, so that up() twice connects once. */
  #connecting: Promise<void> | undefined;
  #retry: ReturnType<typeof setTimeout> | undefined;
  #closed = false;

  constructor(card: FrameSink, spec: NetworkSpec, onEvent: (event: NetworkEvent) => void = () => {}) {
    this.#bridge = new NetBridge(card);
    this.#spec = spec;
    this.#onEvent = onEvent;
  }

  /** The socket the network is reached at (known once passt started, for a started one). */
  get socketPath(): string | undefined {
    return this.#spec.kind === "socket" ? this.#spec.path : this.#passt?.socketPath;
  }

  /** The passt this host started, if any. */
  get passt(): Passt | undefined {
    return this.#passt;
  }

  /** Released frames dropped because no link came in time. */
  get dropped(): number {
    return this.#bridge.dropped + (this.#link?.stats.dropped ?? 0);
  }

  /**
   * The guest runs here: starts passt if this host owns it and it is not running yet, and
   * connects. Resolves once connected; rejects (E_NET_UNAVAILABLE) if passt cannot start or the
   * socket does not answer, and tries again every second until connected or {@link down}.
   * Released frames meanwhile wait in the bridge.
   */
  up(): Promise<void> {
    this.#wanted = true;
    this.#connecting ??= this.#connect().then(
      () => void (this.#connecting = undefined),
      (error: Error) => {
        this.#connecting = undefined;
        this.#onEvent({ event: "unreachable", socket: this.socketPath ?? "passt", reason: error.message });
        this.#retryLater();
        throw error;
      },
    );
    return this.#connecting;
  }

  /** The guest stopped running here: hangs up, so that the host now running it can connect. */
  down(): void {
    this.#wanted = false;
    clearTimeout(this.#retry);
    this.#bridge.detach();
    const link = this.#link;
    this.#link = undefined;
    if (link) {
      link.close();
      this.#onEvent({ event: "disconnected", socket: this.socketPath! });
    }
  }

  /** A frame the guest sent, released by output commit. */
  release(frame: Uint8Array): void {
    this.#bridge.release(frame);
  }

  /**
   * Hangs up, and stops the passt this host started if the guest still runs here. A host that
   * handed the guest over (fenced: {@link down} was called) leaves passt to the new owner.
   */
  async close(): Promise<void> {
    const running = this.#wanted;
    this.#closed = true;
    this.down();
    await this.#connecting?.catch(() => {});
    this.down();
    if (running) await this.#passt?.stop();
  }

  async #connect(): Promise<void> {
    if (this.#link && !this.#link.closed) return;
    if (this.#spec.kind === "passt" && !this.#passt) {
      this.#passt = await startPasst(this.#spec.passt);
      this.#onEvent({ event: "started", socket: this.#passt.socketPath, pid: this.#passt.pid });
    }
    const socket = this.socketPath!;
    const link = await NetLink.connect({ path: socket }, { retryMs: CONNECT_RETRY_MS });
    if (!this.#wanted || this.#closed) {
      link.close();
      return;
    }
    this.#link = link;
    link.onClose((error) => this.#lost(link, error));
    this.#bridge.attach(link);
    this.#onEvent({ event: "connected", socket });
  }

  /** The link broke while the guest runs here (passt restarted or died): connect again, each second. */
  #lost(link: NetLink, error?: Error): void {
    if (this.#link !== link || !this.#wanted || this.#closed) return;
    this.#link = undefined;
    this.#bridge.detach();
    this.#onEvent({ event: "lost", socket: this.socketPath!, reason: error?.message ?? "closed by the network" });
    this.#retryLater();
  }

  #retryLater(): void {
    clearTimeout(this.#retry);
    if (!this.#wanted || this.#closed) return;
    this.#retry = setTimeout(() => {
      if (this.#wanted && !this.#closed) this.up().catch(() => {}); // up() reports and schedules the next try
    }, RECONNECT_DELAY_MS);
  }
}
