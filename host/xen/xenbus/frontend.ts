/**
 * A xenbus frontend, after Linux's blkfront (backend_changed):
 *
 * - own Initialising, backend InitWait (or already Connected): read the backend's features, set
 *   up, publish the own keys with Initialised in one transaction;
 * - own Initialised, backend Connected: read the device's properties, Connected;
 * - own Initialised, Connected or Closing, backend Closing, Closed or gone: disconnect, Closed;
 *   own Initialising and backend Closing (an unplug before it started): Closed;
 * - {@link XenbusFrontend.close} starts a disconnect from this side: Closing, then Closed once
 *   the backend closes too.
 *
 * A backend that is Closed while this side is Initialising is waiting for this side (a
 * reconnect): the frontend waits for its InitWait. The frontend watches the backend's `state`.
 */

import { ErrorCode, TandemError } from "../../errors.ts";
import { XenbusEndpoint, type XenbusEndpointOptions } from "./endpoint.ts";
import { readerFor, type XenbusKeys, type XenbusReader } from "./keys.ts";
import { XenbusState, frontendTransition, stateName, type FrontendEvent } from "./states.ts";
import { readOptional, readState, type XenbusStore } from "./xenbus-store.ts";

/** What the device behind a frontend does at each step. */
export interface FrontendDevice {
  /**
   * The backend is waiting (InitWait): read its features, set up (grant the ring, allocate the
   * event channel). Resolves with the keys to publish with Initialised, in one transaction.
   */
  initialise(backend: XenbusReader): XenbusKeys | Promise<XenbusKeys>;
  /** The backend is Connected: read the device's properties. A throw writes the error node and closes. */
  connect(backend: XenbusReader): void | Promise<void>;
  /** Undoes initialise and connect. Called whenever the device closes: must be idempotent. */
  disconnect(): void | Promise<void>;
}

/** How a frontend is set up. The frontend domain is the store's. */
export interface XenbusFrontendOptions extends XenbusEndpointOptions {
  /** The frontend domain's store connection. */
  store: XenbusStore;
  /** Device type, e.g. "vbd". */
  type: string;
  devid: number;
  device: FrontendDevice;
}

const TYPE = /^[a-z0-9_-]{1,32}$/i;

/** The frontend end of one device. */
export class XenbusFrontend extends XenbusEndpoint {
  readonly #device: FrontendDevice;
  #backendPath: string | undefined;
  #backendDomid: number | undefined;
  #started = false;

  constructor(options: XenbusFrontendOptions) {
    const { store, type, devid } = options;
    if (!TYPE.test(type) || !Number.isInteger(devid) || devid < 0 || devid > 0xffffffff) {
      throw new TandemError(ErrorCode.BadArgument, `xenbus frontend: type '${type}' and devid ${devid} must be a short name and an integer 0 to 2^32-1`);
    }
    super("frontend", store, `/local/domain/${store.domid}/device/${type}/${devid}`, options);
    this.#device = options.device;
  }

  /** The backend's directory, from this side's `backend` key (after {@link start}). */
  get backendPath(): string {
    if (this.#backendPath === undefined) throw new TandemError(ErrorCode.InvalidState, `xenbus frontend ${this.path} is not started`);
    return this.#backendPath;
  }

  /** The backend's domain, from this side's `backend-id` key (after {@link start}). */
  get backendDomid(): number {
    if (this.#backendDomid === undefined) throw new TandemError(ErrorCode.InvalidState, `xenbus frontend ${this.path} is not started`);
    return this.#backendDomid;
  }

  /**
   * Reads `backend` and `backend-id`, goes Initialising if the directory is left Closed by a
   * previous frontend (a driver reload), and starts watching the backend.
   */
  start(): void {
    if (this.#started) throw new TandemError(ErrorCode.InvalidState, `xenbus frontend ${this.path} was already started`);
    const backend = readOptional(this.store, `${this.path}/backend`);
    const backendId = readOptional(this.store, `${this.path}/backend-id`);
    if (backend === undefined || backendId === undefined || !/^[0-9]{1,5}$/.test(backendId)) {
      throw new TandemError(ErrorCode.InvalidState, `xenbus frontend ${this.path}: the toolstack has not written 'backend' and 'backend-id' (found ${backend}, ${backendId})`);
    }
    this.#started = true;
    this.#backendPath = backend;
    this.#backendDomid = Number(backendId);
    const state = readState(this.store, `${this.path}/state`);
    this.adopt(state);
    if (state !== XenbusState.Initialising) this.#move("start");
    this.watch([`${backend}/state`]);
  }

  /** Starts a disconnect from this side: Closing; Closed follows once the backend closes. */
  close(): void {
    this.#move("close");
  }

  protected async step(): Promise<boolean> {
    const backend = readState(this.store, `${this.backendPath}/state`);
    const reader = readerFor(this.store, this.backendPath);
    switch (this.state) {
      case XenbusState.Initialising:
        if (backend === XenbusState.InitWait || backend === XenbusState.Connected) return this.#move("initialise", await this.#device.initialise(reader));
        return backend === XenbusState.Closing ? this.#close() : false;
      case XenbusState.Initialised:
      case XenbusState.Connected:
      case XenbusState.Closing:
        if (backend === XenbusState.Closing || backend === XenbusState.Closed || backend === XenbusState.Unknown) return this.#close();
        if (this.state === XenbusState.Initialised && backend === XenbusState.Connected) {
          await this.#device.connect(reader);
          return this.#move("connect");
        }
        return false;
      default:
        return false;
    }
  }

  protected closeAfterError(): void {
    const state = this.state;
    if (state === XenbusState.Initialising || state === XenbusState.Initialised || state === XenbusState.Connected) this.#move("close");
  }

  #move(event: FrontendEvent, keys?: XenbusKeys): boolean {
    const next = frontendTransition(this.state, event);
    if (!this.setState(next, keys)) throw new TandemError(ErrorCode.InvalidState, `xenbus frontend ${this.path}: its state is no longer ${stateName(this.state)}; something else wrote it`);
    return true;
  }

  async #close(): Promise<boolean> {
    await this.#device.disconnect();
    return this.#move("closed");
  }
}
