/**
 * Interdomain event channels, in process (after Xen's common/event_channel.c): a domain allocates
 * an unbound port for a remote domain (EVTCHNOP_alloc_unbound), the remote domain binds to it
 * (EVTCHNOP_bind_interdomain), and either end's notify (EVTCHNOP_send) sets the other end's
 * pending bit. The handler runs later, on a microtask, with the bit cleared first; notifications
 * that arrive while the bit is set are one event, as in Xen. Closing one end leaves the other
 * unbound (waiting for a new peer), as evtchn_close does; sends to an unbound port are dropped.
 */

import { ErrorCode, TandemError } from "../errors.ts";

/** Called with the local port when an event arrives on it. */
export type EventHandler = (port: number) => void;

/** What a port is: free (never allocated or closed), waiting for a peer, or connected. */
export type PortState = "free" | "unbound" | "interdomain";

/** How the channels are set up. */
export interface EventChannelsOptions {
  /** Ports per domain (port 0 is never used); default 4096, the 2-level ABI's limit for 64-bit guests. */
  maxPorts?: number;
  /** Where an error thrown by a handler goes; default console.error. */
  onHandlerError?: (error: unknown, domid: number, port: number) => void;
}

interface Port {
  state: "unbound" | "interdomain";
  remoteDomid: number;
  /** The peer's port, when interdomain. */
  remotePort: number;
  pending: boolean;
  handler: EventHandler | undefined;
}

const DEFAULT_MAX_PORTS = 4096;
/** The highest domain id of a real domain (DOMID_FIRST_RESERVED - 1 in xen.h). */
const MAX_DOMID = 0x7fef;

/** Every domain's event channels. */
export class EventChannels {
  readonly maxPorts: number;
  readonly #domains = new Map<number, Map<number, Port>>();
  readonly #onHandlerError: (error: unknown, domid: number, port: number) => void;

  constructor(options: EventChannelsOptions = {}) {
    const maxPorts = options.maxPorts ?? DEFAULT_MAX_PORTS;
    if (!Number.isInteger(maxPorts) || maxPorts < 2) throw new TandemError(ErrorCode.BadArgument, `maxPorts ${maxPorts}: expected an integer of at least 2`);
    this.maxPorts = maxPorts;
    this.#onHandlerError = options.onHandlerError ?? ((error, domid, port) => console.error(`event channel ${domid}:${port}: handler failed:`, error));
  }

  /** A new port of `domid` that `remoteDomid` may bind to. */
  allocUnbound(domid: number, remoteDomid: number): number {
    checkDomid(domid);
    checkDomid(remoteDomid);
    return this.#allocate(domid, { state: "unbound", remoteDomid, remotePort: 0, pending: false, handler: undefined });
  }

  /**
   * A new port of `domid` connected to `remotePort` of `remoteDomid`, which must be unbound and
   * allocated for `domid` (E_EVTCHN_PORT otherwise).
   */
  bindInterdomain(domid: number, remoteDomid: number, remotePort: number): number {
    checkDomid(domid);
    checkDomid(remoteDomid);
    const remote = this.#domains.get(remoteDomid)?.get(remotePort);
    if (remote === undefined || remote.state !== "unbound" || remote.remoteDomid !== domid) {
      throw new TandemError(ErrorCode.EvtchnPort, `port ${remotePort} of domain ${remoteDomid} is not an unbound port for domain ${domid}`);
    }
    const port = this.#allocate(domid, { state: "interdomain", remoteDomid, remotePort, pending: false, handler: undefined });
    remote.state = "interdomain";
    remote.remotePort = port;
    return port;
  }

  /**
   * Sets the handler of a port of `domid` (undefined removes it). An event that arrived before
   * there was a handler is delivered to it then.
   */
  onEvent(domid: number, port: number, handler: EventHandler | undefined): void {
    const entry = this.#port(domid, port);
    entry.handler = handler;
    if (handler !== undefined && entry.pending) this.#schedule(domid, port, entry);
  }

  /** Signals the other end of `domid`'s port. A port without a peer yet drops it, as Xen does. */
  notify(domid: number, port: number): void {
    const entry = this.#port(domid, port);
    if (entry.state !== "interdomain") return;
    const remote = this.#domains.get(entry.remoteDomid)?.get(entry.remotePort);
    if (remote === undefined || remote.pending) return;
    remote.pending = true;
    this.#schedule(entry.remoteDomid, entry.remotePort, remote);
  }

  /** Closes a port of `domid`; its peer, if any, becomes unbound for this domain again. Pending events are dropped. */
  close(domid: number, port: number): void {
    const entry = this.#port(domid, port);
    this.#domains.get(domid)?.delete(port);
    if (entry.state !== "interdomain") return;
    const remote = this.#domains.get(entry.remoteDomid)?.get(entry.remotePort);
    if (remote === undefined) return;
    remote.state = "unbound";
    remote.remoteDomid = domid;
    remote.remotePort = 0;
  }

  /** The state of a port of `domid`. */
  state(domid: number, port: number): PortState {
    return this.#domains.get(domid)?.get(port)?.state ?? "free";
  }

  /** The peer of an interdomain port, or undefined. */
  peer(domid: number, port: number): { domid: number; port: number } | undefined {
    const entry = this.#domains.get(domid)?.get(port);
    return entry?.state === "interdomain" ? { domid: entry.remoteDomid, port: entry.remotePort } : undefined;
  }

  #schedule(domid: number, port: number, entry: Port): void {
    queueMicrotask(() => {
      // The port may have been closed, or closed and reused, meanwhile.
      if (this.#domains.get(domid)?.get(port) !== entry || !entry.pending || entry.handler === undefined) return;
      entry.pending = false;
      try {
        entry.handler(port);
      } catch (error) {
        this.#onHandlerError(error, domid, port);
      }
    });
  }

  #allocate(domid: number, entry: Port): number {
    let ports = this.#domains.get(domid);
    if (ports === undefined) {
      ports = new Map();
      this.#domains.set(domid, ports);
    }
    for (let port = 1; port < this.maxPorts; port++) {
      if (!ports.has(port)) {
        ports.set(port, entry);
        return port;
      }
    }
    throw new TandemError(ErrorCode.EvtchnPort, `domain ${domid} has no free event channel port (${this.maxPorts - 1} in use)`);
  }

  #port(domid: number, port: number): Port {
    const entry = this.#domains.get(domid)?.get(port);
    if (entry === undefined) throw new TandemError(ErrorCode.EvtchnPort, `port ${port} of domain ${domid} is not open`);
    return entry;
  }
}

function checkDomid(domid: number): void {
  if (!Number.isInteger(domid) || domid < 0 || domid > MAX_DOMID) throw new TandemError(ErrorCode.BadArgument, `${domid} is not a domain id (0 to ${MAX_DOMID})`);
}
