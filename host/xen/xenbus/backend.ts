/**
 * A xenbus backend: publishes the device's features and goes InitWait, connects when the
 * frontend is Initialised, and walks the disconnect, reconnect and unplug paths of Linux's
 * blkback (frontend_changed) and QEMU's xen-bus (xen_device_backend_changed, seed 002):
 *
 * - frontend Initialised or Connected, backend InitWait: disconnect (idempotent), connect, Connected;
 * - frontend Closing: Closing;
 * - frontend Closed or gone (Unknown): disconnect, Closed;
 * - backend Closing (its own or the toolstack's) with no active frontend (not InitWait,
 *   Initialised, Connected or Closing): disconnect, Closed;
 * - backend Closed, `online` 1 and a new frontend Initialising: back to InitWait. The new frontend's
 *   Initialising is the trigger, as in Linux and in QEMU since 2019; the seed's first version
 *   cycled on Closed alone, which the reference notes as a flaw (section 5);
 * - `online` 0 (or missing) and the backend Closed, Initialising, InitWait or Unknown: the device
 *   is destroyed: disconnected, its watches gone, its backend directory removed.
 *
 * The backend's `state` is written by the backend only, except for the toolstack's Closing
 * (unplug, see toolstack.ts), which it adopts. It watches its own `state` and `online` and the
 * frontend's `state`.
 */

import { ErrorCode, TandemError } from "../../errors.ts";
import { XenbusEndpoint, type XenbusEndpointOptions } from "./endpoint.ts";
import { readerFor, type XenbusKeys, type XenbusReader } from "./keys.ts";
import { backendPath, frontendPath } from "./paths.ts";
import { XenbusState, backendTransition, type BackendEvent } from "./states.ts";
import { readOptional, readState, type XenbusStore } from "./xenbus-store.ts";

/** What the device behind a backend does at each step. */
export interface BackendDevice {
  /** Keys published with InitWait (features, maxima), in the same transaction. */
  features(): XenbusKeys | Promise<XenbusKeys>;
  /**
   * The frontend is Initialised: read its keys (each once), set up (map the ring, bind the event
   * channel). Resolves with keys published with Connected. A throw writes the error node and closes.
   */
  connect(frontend: XenbusReader): XenbusKeys | void | Promise<XenbusKeys | void>;
  /** Undoes connect. Called before every connect and whenever the device closes: must be idempotent. */
  disconnect(): void | Promise<void>;
}

/** How a backend is set up. The backend domain is the store's. */
export interface XenbusBackendOptions extends XenbusEndpointOptions {
  /** The backend domain's store connection. */
  store: XenbusStore;
  /** Device type, e.g. "vbd". */
  type: string;
  frontendDomid: number;
  devid: number;
  device: BackendDevice;
  /** Called once the device is destroyed (online 0) and its directory removed. */
  onRemoved?: () => void;
}

/** Frontend states in which a frontend is using (or setting up) the device, after QEMU's xen_device_frontend_is_active. */
const ACTIVE: ReadonlySet<XenbusState> = new Set([XenbusState.InitWait, XenbusState.Initialised, XenbusState.Connected, XenbusState.Closing]);
/** Backend states in which an offline device is destroyed (QEMU's xen_device_backend_changed). */
const DESTROYABLE: ReadonlySet<XenbusState> = new Set([XenbusState.Closed, XenbusState.Initialising, XenbusState.InitWait, XenbusState.Unknown]);

/** The backend end of one device. */
export class XenbusBackend extends XenbusEndpoint {
  /** The frontend's directory. */
  readonly frontendPath: string;
  readonly #device: BackendDevice;
  readonly #onRemoved: (() => void) | undefined;
  #started = false;
  #removed = false;

  constructor(options: XenbusBackendOptions) {
    const id = { type: options.type, backendDomid: options.store.domid, frontendDomid: options.frontendDomid, devid: options.devid };
    super("backend", options.store, backendPath(id), options);
    this.frontendPath = frontendPath(id);
    this.#device = options.device;
    this.#onRemoved = options.onRemoved;
  }

  /** Whether the device was destroyed (online 0) and its directory removed. */
  get removed(): boolean {
    return this.#removed;
  }

  /**
   * Publishes the device's features and goes InitWait, then starts watching. The toolstack must
   * have created the directory with state Initialising (E_INVALID_STATE otherwise).
   */
  async start(): Promise<void> {
    if (this.#started) throw new TandemError(ErrorCode.InvalidState, `xenbus backend ${this.path} was already started`);
    this.#started = true;
    const state = readState(this.store, `${this.path}/state`);
    const next = backendTransition(state, "published");
    this.adopt(state);
    const keys = await this.#device.features();
    if (!this.setState(next, keys)) throw new TandemError(ErrorCode.InvalidState, `xenbus backend ${this.path}: its state changed while the features were being published`);
    this.watch([`${this.path}/state`, `${this.path}/online`, `${this.frontendPath}/state`]);
  }

  protected async step(): Promise<boolean> {
    if (this.#removed) return false;
    const own = readState(this.store, `${this.path}/state`);
    const onlineText = readOptional(this.store, `${this.path}/online`);
    const online = onlineText !== undefined && /^[0-9]+$/.test(onlineText) && Number(onlineText) !== 0;
    const frontend = readState(this.store, `${this.frontendPath}/state`);
    const state = this.state;

    if (own === XenbusState.Unknown) return this.#destroy(false);
    if (own === XenbusState.Closing && state !== XenbusState.Closing) {
      this.adopt(backendTransition(state, "unplug"));
      return true;
    }
    if (!online && DESTROYABLE.has(state)) return this.#destroy(true);

    switch (state) {
      case XenbusState.InitWait:
      case XenbusState.Connected:
        if (frontend === XenbusState.Closing) return this.#move("close");
        if (frontend === XenbusState.Closed || frontend === XenbusState.Unknown) return this.#close();
        if (state === XenbusState.InitWait && (frontend === XenbusState.Initialised || frontend === XenbusState.Connected)) return this.#connect();
        return false;
      case XenbusState.Closing:
        return ACTIVE.has(frontend) ? false : this.#close();
      case XenbusState.Closed:
        return online && frontend === XenbusState.Initialising ? this.#move("reconnect") : false;
      default:
        return false;
    }
  }

  protected closeAfterError(): void {
    const state = this.state;
    if (state === XenbusState.Initialising || state === XenbusState.InitWait || state === XenbusState.Connected) this.#move("close");
  }

  #move(event: BackendEvent, keys?: XenbusKeys): boolean {
    this.setState(backendTransition(this.state, event), keys);
    return true;
  }

  async #connect(): Promise<boolean> {
    await this.#device.disconnect();
    const keys = await this.#device.connect(readerFor(this.store, this.frontendPath));
    return this.#move("connect", keys ?? {});
  }

  async #close(): Promise<boolean> {
    await this.#device.disconnect();
    return this.#move("closed");
  }

  async #destroy(removeDirectory: boolean): Promise<boolean> {
    this.#removed = true;
    this.stop();
    await this.#device.disconnect();
    if (removeDirectory) this.store.rm(this.path);
    this.#onRemoved?.();
    return false;
  }
}
