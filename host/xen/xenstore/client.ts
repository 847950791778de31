/**
 * A xenstore client over a Unix socket, speaking xs_wire: for tests and for frontends in another
 * process than the store. Replies are matched to requests by req_id, as xenstore.txt requires;
 * watch events go to the listeners of {@link XenStoreClient.onWatchEvent}.
 */

import * as net from "node:net";
import { ErrorCode, TandemError } from "../../errors.ts";
import { formatPerm, parsePerm, type Perm, type Perms } from "./perms.ts";
import { XsDecoder, XsType, bytesToText, encodeMessage, nulTerminated, splitPayload, type XsMessage } from "./wire.ts";
import { XenStoreError, isXsErrno } from "./xs-error.ts";

/** Called with a watch event's path and token. */
export type WatchListener = (path: string, token: string) => void;

interface Pending {
  resolve(payload: Uint8Array): void;
  reject(error: Error): void;
}

/** A connection to a xenstored (tandem's or Xen's) on a Unix socket. */
export class XenStoreClient {
  readonly #socket: net.Socket;
  readonly #decoder = new XsDecoder();
  readonly #pending = new Map<number, Pending>();
  readonly #listeners = new Set<WatchListener>();
  #lastReqId = 0;
  #failure: Error | undefined;

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    socket.on("data", (chunk: Uint8Array) => this.#received(chunk));
    socket.on("error", (error) => this.#fail(new TandemError(ErrorCode.PeerClosed, `xenstore connection failed: ${error.message}`)));
    socket.on("close", () => this.#fail(new TandemError(ErrorCode.PeerClosed, "the xenstore connection closed")));
  }

  /** Connects to the xenstored listening on `path`. */
  static connect(path: string): Promise<XenStoreClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ path });
      const failed = (error: Error) => reject(new TandemError(ErrorCode.PeerClosed, `cannot connect to xenstore at ${path}: ${error.message}`));
      socket.once("error", failed);
      socket.once("connect", () => {
        socket.off("error", failed);
        resolve(new XenStoreClient(socket));
      });
    });
  }

  /**
   * Sends one request and resolves with the reply's payload; an ERROR reply rejects with a
   * {@link XenStoreError}.
   */
  request(type: number, payload: Uint8Array, tx = 0): Promise<Uint8Array> {
    if (this.#failure !== undefined) return Promise.reject(this.#failure);
    const reqId = this.#nextReqId();
    const bytes = encodeMessage({ type, reqId, txId: tx, payload });
    return new Promise((resolve, reject) => {
      this.#pending.set(reqId, { resolve, reject });
      this.#socket.write(bytes);
    });
  }

  /** READ. */
  read(path: string, tx = 0): Promise<Uint8Array> {
    return this.request(XsType.Read, nulTerminated([path]), tx);
  }

  /** READ, decoded as UTF-8. */
  async readString(path: string, tx = 0): Promise<string> {
    return new TextDecoder().decode(await this.read(path, tx));
  }

  /** WRITE (a string is sent as UTF-8). */
  async write(path: string, value: Uint8Array | string, tx = 0): Promise<void> {
    const bytes = typeof value === "string" ? new TextEncoder().encode(value) : value;
    const head = nulTerminated([path]);
    const payload = new Uint8Array(head.length + bytes.length);
    payload.set(head, 0);
    payload.set(bytes, head.length);
    await this.request(XsType.Write, payload, tx);
  }

  /** MKDIR. */
  async mkdir(path: string, tx = 0): Promise<void> {
    await this.request(XsType.Mkdir, nulTerminated([path]), tx);
  }

  /** RM. */
  async rm(path: string, tx = 0): Promise<void> {
    await this.request(XsType.Rm, nulTerminated([path]), tx);
  }

  /** DIRECTORY: the children's names. */
  async directory(path: string, tx = 0): Promise<string[]> {
    return this.#strings(await this.request(XsType.Directory, nulTerminated([path]), tx));
  }

  /** GET_PERMS. */
  async getPerms(path: string, tx = 0): Promise<Perm[]> {
    return this.#strings(await this.request(XsType.GetPerms, nulTerminated([path]), tx)).map(parsePerm);
  }

  /** SET_PERMS. */
  async setPerms(path: string, perms: Perms, tx = 0): Promise<void> {
    await this.request(XsType.SetPerms, nulTerminated([path, ...perms.map(formatPerm)]), tx);
  }

  /** TRANSACTION_START: the new transaction's id. */
  async transactionStart(): Promise<number> {
    const [id] = this.#strings(await this.request(XsType.TransactionStart, nulTerminated([""])));
    const tx = Number(id);
    if (!/^[0-9]{1,10}$/.test(id ?? "") || tx === 0 || tx > 0xffffffff) throw this.#protocol(`TRANSACTION_START answered '${id}'`);
    return tx;
  }

  /** TRANSACTION_END: commit (rejects with EAGAIN on a conflict: retry) or abort. */
  async transactionEnd(tx: number, commit: boolean): Promise<void> {
    await this.request(XsType.TransactionEnd, nulTerminated([commit ? "T" : "F"]), tx);
  }

  /** WATCH: events arrive at the {@link onWatchEvent} listeners, the first one at once. */
  async watch(path: string, token: string): Promise<void> {
    await this.request(XsType.Watch, nulTerminated([path, token]));
  }

  /** UNWATCH. */
  async unwatch(path: string, token: string): Promise<void> {
    await this.request(XsType.Unwatch, nulTerminated([path, token]));
  }

  /** GET_DOMAIN_PATH. */
  async getDomainPath(domid: number): Promise<string> {
    return this.#strings(await this.request(XsType.GetDomainPath, nulTerminated([String(domid)])))[0] ?? "";
  }

  /** Adds a listener for watch events; returns its removal. */
  onWatchEvent(listener: WatchListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Closes the connection; requests still waiting reject. */
  close(): void {
    this.#socket.destroy();
  }

  #nextReqId(): number {
    do {
      this.#lastReqId = (this.#lastReqId + 1) >>> 0;
    } while (this.#pending.has(this.#lastReqId));
    return this.#lastReqId;
  }

  #received(chunk: Uint8Array): void {
    this.#decoder.push(chunk);
    for (let decoded = this.#decoder.next(); decoded !== undefined; decoded = this.#decoder.next()) {
      if ("oversized" in decoded) {
        this.#fail(this.#protocol(`the server sent a ${decoded.oversized.len}-byte payload`));
        return;
      }
      this.#dispatch(decoded.message);
    }
  }

  #dispatch(message: XsMessage): void {
    if (message.type === XsType.WatchEvent) {
      const [path, token] = this.#strings(message.payload);
      if (path === undefined || token === undefined) {
        this.#fail(this.#protocol("a WATCH_EVENT without a path and a token"));
        return;
      }
      for (const listener of this.#listeners) listener(path, token);
      return;
    }
    const pending = this.#pending.get(message.reqId);
    if (pending === undefined) {
      this.#fail(this.#protocol(`a reply to request ${message.reqId}, which is not waiting`));
      return;
    }
    this.#pending.delete(message.reqId);
    if (message.type !== XsType.Error) {
      pending.resolve(message.payload);
      return;
    }
    const [errno] = this.#strings(message.payload);
    pending.reject(errno !== undefined && isXsErrno(errno) ? new XenStoreError(errno, "the xenstore server refused the request") : this.#protocol(`an ERROR reply '${errno}'`));
  }

  /** NUL-terminated strings (a trailing unterminated one too, as some servers send). */
  #strings(payload: Uint8Array): string[] {
    const { strings, rest } = splitPayload(payload);
    return rest.length > 0 ? [...strings, bytesToText(rest)] : strings;
  }

  #protocol(what: string): TandemError {
    return new TandemError(ErrorCode.XsProtocol, `xenstore protocol: ${what}`);
  }

  #fail(error: Error): void {
    this.#failure ??= error;
    for (const pending of this.#pending.values()) pending.reject(this.#failure);
    this.#pending.clear();
    if (!this.#socket.destroyed) this.#socket.destroy();
  }
}
