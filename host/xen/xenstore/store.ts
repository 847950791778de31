/**
 * The xenstore itself, for use in-process: {@link XenStore} holds the tree, and each
 * {@link XenStoreConnection} is one client (a socket, or a part of tandem) acting as one domain,
 * with its own transactions and watches, as in xenstored.
 *
 * Watch events are delivered asynchronously (on a microtask), in the order of the changes, after
 * the call that caused them has returned: a watcher is never re-entered from inside an edit.
 */

import { XenStoreError } from "./xs-error.ts";
import { INTRODUCE_DOMAIN, RELEASE_DOMAIN, domainPath, resolvePath } from "./path.ts";
import { MAX_DOMID, accessFor, allowsRead, type Caller, type Perm, type Perms } from "./perms.ts";
import { DEFAULT_TRANSACTION_LIMITS, TransactionTable, type Transaction, type TransactionLimits } from "./transactions.ts";
import { DEFAULT_TREE_LIMITS, Tree, applyEdit, findNode, type ChangeEvent, type EditContext, type TreeEdit, type TreeLimits } from "./tree.ts";
import { DEFAULT_MAX_WATCHES, MAX_TOKEN_BYTES, WatchList, type Watch } from "./watches.ts";

/** Every limit of the store. */
export interface XenStoreLimits extends TreeLimits, TransactionLimits {
  /** Watches one connection may hold (E2BIG beyond). */
  maxWatchesPerConnection: number;
}

/** The defaults, xenstored's. */
export const DEFAULT_XENSTORE_LIMITS: XenStoreLimits = { ...DEFAULT_TREE_LIMITS, ...DEFAULT_TRANSACTION_LIMITS, maxWatchesPerConnection: DEFAULT_MAX_WATCHES };

/** How a store is set up. */
export interface XenStoreOptions {
  /** Limits to change from {@link DEFAULT_XENSTORE_LIMITS}. */
  limits?: Partial<XenStoreLimits>;
  /** Which domains are privileged (full access, no quotas); default dom0 only. */
  isPrivileged?: (domid: number) => boolean;
}

/** Called with the event path (relative for a relative watch) and the watch's token. */
export type WatchCallback = (path: string, token: string) => void;

/** A node's children and its generation (which changes when the set of children does). */
export interface DirectoryListing {
  generation: number;
  children: string[];
}

/** The first domain id that is not a real domain (DOMID_FIRST_RESERVED in xen.h). */
const DOMID_FIRST_RESERVED = 0x7ff0;
/** tx_id is a u32 and 0 means none. */
const MAX_TRANSACTION_ID = 0xffffffff;

/** What a store and its connections share; only this module uses it. */
export class StoreCore {
  tree: Tree;
  readonly limits: XenStoreLimits;
  readonly isPrivileged: (domid: number) => boolean;
  readonly connections = new Set<XenStoreConnection>();
  readonly introduced = new Set<number>();
  #gen = 0;
  #lastTransaction = 0;
  readonly #transactionIds = new Set<number>();
  readonly #queue: { connection: XenStoreConnection; watch: Watch; path: string }[] = [];
  #flushing = false;

  constructor(options: XenStoreOptions) {
    this.limits = { ...DEFAULT_XENSTORE_LIMITS, ...options.limits };
    this.isPrivileged = options.isPrivileged ?? ((domid) => domid === 0);
    this.tree = Tree.empty(this.nextGen());
  }

  nextGen(): number {
    return ++this.#gen;
  }

  /** Transactions open now, over every connection. */
  get openTransactions(): number {
    return this.#transactionIds.size;
  }

  allocateTransactionId(): number {
    // Open ids are few (connections x the per-connection limit), so this ends within as many steps.
    do {
      this.#lastTransaction = this.#lastTransaction >= MAX_TRANSACTION_ID ? 1 : this.#lastTransaction + 1;
    } while (this.#transactionIds.has(this.#lastTransaction));
    this.#transactionIds.add(this.#lastTransaction);
    return this.#lastTransaction;
  }

  releaseTransactionId(id: number): void {
    this.#transactionIds.delete(id);
  }

  /** Queues the events of `event` for every watch it fires whose connection may read the node. */
  fire(event: ChangeEvent): void {
    for (const connection of this.connections) {
      const special = event.path.startsWith("@");
      const caller = connection.caller;
      if (!caller.privileged && (special || !allowsRead(accessFor(event.perms, caller)))) continue;
      for (const { watch, path } of connection.watchesFiredBy(event)) this.queue(connection, watch, path);
    }
  }

  queue(connection: XenStoreConnection, watch: Watch, path: string): void {
    this.#queue.push({ connection, watch, path });
    if (this.#flushing) return;
    this.#flushing = true;
    queueMicrotask(() => this.#flush());
  }

  #flush(): void {
    // Callbacks may cause more events; they join the end of the same queue.
    try {
      for (let next = this.#queue.shift(); next !== undefined; next = this.#queue.shift()) {
        next.connection.deliver(next.watch, next.path);
      }
    } finally {
      this.#flushing = false;
      if (this.#queue.length > 0) {
        this.#flushing = true;
        queueMicrotask(() => this.#flush());
      }
    }
  }
}

/** One client of the store, acting as one domain, with its own transactions and watches. */
export class XenStoreConnection {
  /** Who this connection acts as. */
  readonly caller: Caller;
  readonly #core: StoreCore;
  readonly #watches: WatchList;
  readonly #callbacks = new Map<Watch, WatchCallback>();
  readonly #transactions: TransactionTable;
  #closed = false;

  /** Use {@link XenStore.connect}. */
  constructor(core: StoreCore, domid: number) {
    this.#core = core;
    this.caller = { domid, privileged: core.isPrivileged(domid) };
    this.#watches = new WatchList(core.limits.maxWatchesPerConnection);
    this.#transactions = new TransactionTable(core.limits);
    core.connections.add(this);
  }

  /** The domain this connection acts as. */
  get domid(): number {
    return this.caller.domid;
  }

  /** Watches this connection holds. */
  get watchCount(): number {
    return this.#watches.size;
  }

  /** READ: the node's value. `tx` 0 is outside any transaction. */
  read(path: string, tx = 0): Uint8Array {
    const view = this.#view(tx);
    return findNode(view.tree, view.context, this.#resolve(path), "read").value.slice();
  }

  /** READ, decoded as UTF-8 (xenstore values are ASCII by convention). */
  readString(path: string, tx = 0): string {
    return new TextDecoder().decode(this.read(path, tx));
  }

  /** WRITE: sets the value (a string is written as UTF-8), creating missing parents. */
  write(path: string, value: Uint8Array | string, tx = 0): void {
    const bytes = typeof value === "string" ? new TextEncoder().encode(value) : value;
    this.#edit({ kind: "write", path: this.#resolve(path), value: bytes }, tx);
  }

  /** MKDIR: makes sure the node exists. */
  mkdir(path: string, tx = 0): void {
    this.#edit({ kind: "mkdir", path: this.#resolve(path) }, tx);
  }

  /** RM: removes the node and its subtree; fine if it does not exist but its parent does. */
  rm(path: string, tx = 0): void {
    this.#edit({ kind: "rm", path: this.#resolve(path) }, tx);
  }

  /** DIRECTORY: the names of the node's children, in creation order. */
  directory(path: string, tx = 0): string[] {
    return this.directoryListing(path, tx).children;
  }

  /** DIRECTORY with the node's generation, for DIRECTORY_PART. */
  directoryListing(path: string, tx = 0): DirectoryListing {
    const view = this.#view(tx);
    const node = findNode(view.tree, view.context, this.#resolve(path), "read");
    return { generation: node.gen, children: [...node.children.keys()] };
  }

  /** GET_PERMS: the node's permission list, owner first. */
  getPerms(path: string, tx = 0): Perm[] {
    const view = this.#view(tx);
    return findNode(view.tree, view.context, this.#resolve(path), "read").perms.slice();
  }

  /** SET_PERMS: replaces the node's permission list (owner or privileged callers only). */
  setPerms(path: string, perms: Perms, tx = 0): void {
    for (const perm of perms) {
      if (!Number.isInteger(perm.domid) || perm.domid < 0 || perm.domid > MAX_DOMID || !/^[nrwb]$/.test(perm.access)) {
        throw new XenStoreError("EINVAL", `${JSON.stringify(perm)} is not a permission`);
      }
    }
    this.#edit({ kind: "setPerms", path: this.#resolve(path), perms: perms.slice() }, tx);
  }

  /** TRANSACTION_START: a new transaction's id, for the `tx` arguments. */
  transactionStart(): number {
    this.#open();
    const id = this.#core.allocateTransactionId();
    try {
      this.#transactions.start(id, this.#core.tree, this.caller);
    } catch (error) {
      this.#core.releaseTransactionId(id);
      throw error;
    }
    return id;
  }

  /**
   * TRANSACTION_END: commits (`commit` true) or discards the transaction; it is over either way.
   * A commit throws EAGAIN if a node the transaction depended on changed since it started: the
   * caller retries the whole transaction.
   */
  transactionEnd(tx: number, commit: boolean): void {
    this.#open();
    const transaction = this.#transactions.get(tx);
    this.#transactions.delete(tx);
    this.#core.releaseTransactionId(tx);
    if (!commit) return;
    const conflict = transaction.conflict(this.#core.tree);
    if (conflict !== undefined) throw new XenStoreError("EAGAIN", `transaction ${tx} conflicts with a change to ${conflict}; retry it`);
    let tree = this.#core.tree;
    const events: ChangeEvent[] = [];
    const context = this.#context();
    for (const edit of transaction.edits) {
      const result = applyEdit(tree, context, edit);
      tree = result.tree;
      if (result.event !== undefined) events.push(result.event);
    }
    this.#core.tree = tree;
    for (const event of events) this.#core.fire(event);
  }

  /**
   * WATCH: calls `callback` for every change to `path` or below it, and once now. `path` may be
   * `@introduceDomain` or `@releaseDomain`.
   */
  watch(path: string, token: string, callback: WatchCallback): void {
    this.#open();
    if (token.includes("\0")) throw new XenStoreError("EINVAL", "a watch token cannot contain NUL");
    if (token.length > MAX_TOKEN_BYTES) throw new XenStoreError("E2BIG", `a watch token is at most ${MAX_TOKEN_BYTES} bytes`);
    const resolved = resolvePath(path, this.domid, true);
    const watch: Watch = { path: resolved.absolute, token, relativeBase: resolved.relativeBase, given: path };
    this.#watches.add(watch);
    this.#callbacks.set(watch, callback);
    this.#core.queue(this, watch, path);
  }

  /** UNWATCH: removes the watch set with this path and token; no events for it come after. */
  unwatch(path: string, token: string): void {
    this.#open();
    const watch = this.#watches.remove(resolvePath(path, this.domid, true).absolute, token);
    this.#callbacks.delete(watch);
  }

  /** RESET_WATCHES: removes every watch and ends every transaction of this connection. */
  resetWatches(): void {
    this.#watches.clear();
    this.#callbacks.clear();
    this.#dropTransactions();
  }

  /** GET_DOMAIN_PATH: `/local/domain/<domid>`. */
  getDomainPath(domid: number): string {
    return domainPath(checkDomid(domid, 0));
  }

  /** INTRODUCE (privileged): marks the domain as connected and fires `@introduceDomain`. */
  introduceDomain(domid: number): void {
    this.#privilegedOnly("INTRODUCE");
    checkDomid(domid, 1);
    if (this.#core.introduced.has(domid)) return;
    this.#core.introduced.add(domid);
    this.#core.fire({ path: INTRODUCE_DOMAIN, recursive: false, perms: [{ domid: 0, access: "n" }] });
  }

  /** RELEASE (privileged): forgets the domain and fires `@releaseDomain`. Its nodes stay. */
  releaseDomain(domid: number): void {
    this.#privilegedOnly("RELEASE");
    checkDomid(domid, 1);
    if (!this.#core.introduced.delete(domid)) throw new XenStoreError("ENOENT", `domain ${domid} was not introduced`);
    this.#core.fire({ path: RELEASE_DOMAIN, recursive: false, perms: [{ domid: 0, access: "n" }] });
  }

  /** IS_DOMAIN_INTRODUCED: dom0 always is; others between INTRODUCE and RELEASE. */
  isDomainIntroduced(domid: number): boolean {
    checkDomid(domid, 0);
    return domid === 0 || this.#core.introduced.has(domid);
  }

  /** Ends the connection: its watches go and its transactions are discarded. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.resetWatches();
    this.#core.connections.delete(this);
  }

  /** @internal For the store: the watches `event` fires, with the paths to report. */
  *watchesFiredBy(event: ChangeEvent): Generator<{ watch: Watch; path: string }> {
    yield* this.#watches.matching(event);
  }

  /** @internal For the store: delivers an event unless its watch has gone meanwhile. */
  deliver(watch: Watch, path: string): void {
    this.#callbacks.get(watch)?.(path, watch.token);
  }

  #resolve(path: string): string {
    return resolvePath(path, this.domid).absolute;
  }

  #context(): EditContext {
    const core = this.#core;
    return { caller: this.caller, limits: core.limits, nextGen: () => core.nextGen() };
  }

  #view(tx: number): { tree: Tree; context: EditContext } {
    this.#open();
    if (tx === 0) return { tree: this.#core.tree, context: this.#context() };
    const transaction = this.#transactions.get(tx);
    return { tree: transaction.tree, context: transaction.context(this.#context()) };
  }

  #edit(edit: TreeEdit, tx: number): void {
    this.#open();
    if (tx !== 0) {
      const transaction: Transaction = this.#transactions.get(tx);
      // Events wait for the commit, which replays the edit on the store.
      transaction.tree = applyEdit(transaction.tree, transaction.context(this.#context()), edit).tree;
      transaction.logged(edit);
      return;
    }
    const result = applyEdit(this.#core.tree, this.#context(), edit);
    this.#core.tree = result.tree;
    if (result.event !== undefined) this.#core.fire(result.event);
  }

  #dropTransactions(): void {
    for (const id of this.#transactions.ids()) this.#core.releaseTransactionId(id);
    this.#transactions.clear();
  }

  #privilegedOnly(what: string): void {
    if (!this.caller.privileged) throw new XenStoreError("EACCES", `only a privileged domain may ${what}; domain ${this.domid} is not`);
  }

  #open(): void {
    if (this.#closed) throw new XenStoreError("EINVAL", `this connection (domain ${this.domid}) is closed`);
  }
}

/**
 * A xenstore: the tree and its connections. The methods taking a `domid` act through one
 * connection per domain kept for in-process callers; {@link connect} makes separate ones.
 */
export class XenStore {
  readonly #core: StoreCore;
  readonly #inProcess = new Map<number, XenStoreConnection>();

  constructor(options: XenStoreOptions = {}) {
    this.#core = new StoreCore(options);
  }

  /** The limits in force. */
  get limits(): Readonly<XenStoreLimits> {
    return this.#core.limits;
  }

  /** Nodes in the store, the root included. */
  get nodeCount(): number {
    return this.#core.tree.nodeCount;
  }

  /** Transactions open now, over every connection. */
  get openTransactions(): number {
    return this.#core.openTransactions;
  }

  /** Watches held now, over every connection. */
  get watchCount(): number {
    let count = 0;
    for (const connection of this.#core.connections) count += connection.watchCount;
    return count;
  }

  /** Nodes owned by `domid`. */
  nodesOwnedBy(domid: number): number {
    return this.#core.tree.ownedBy(domid);
  }

  /** A new connection acting as `domid`, with its own transactions and watches. */
  connect(domid: number): XenStoreConnection {
    return new XenStoreConnection(this.#core, checkDomid(domid, 0));
  }

  /** The in-process connection of `domid`. */
  as(domid: number): XenStoreConnection {
    let connection = this.#inProcess.get(domid);
    if (connection === undefined) {
      connection = this.connect(domid);
      this.#inProcess.set(domid, connection);
    }
    return connection;
  }

  /** {@link XenStoreConnection.read} as `domid`. */
  read(domid: number, path: string, tx = 0): Uint8Array {
    return this.as(domid).read(path, tx);
  }

  /** {@link XenStoreConnection.readString} as `domid`. */
  readString(domid: number, path: string, tx = 0): string {
    return this.as(domid).readString(path, tx);
  }

  /** {@link XenStoreConnection.write} as `domid`. */
  write(domid: number, path: string, value: Uint8Array | string, tx = 0): void {
    this.as(domid).write(path, value, tx);
  }

  /** {@link XenStoreConnection.mkdir} as `domid`. */
  mkdir(domid: number, path: string, tx = 0): void {
    this.as(domid).mkdir(path, tx);
  }

  /** {@link XenStoreConnection.rm} as `domid`. */
  rm(domid: number, path: string, tx = 0): void {
    this.as(domid).rm(path, tx);
  }

  /** {@link XenStoreConnection.directory} as `domid`. */
  directory(domid: number, path: string, tx = 0): string[] {
    return this.as(domid).directory(path, tx);
  }

  /** {@link XenStoreConnection.getPerms} as `domid`. */
  getPerms(domid: number, path: string, tx = 0): Perm[] {
    return this.as(domid).getPerms(path, tx);
  }

  /** {@link XenStoreConnection.setPerms} as `domid`. */
  setPerms(domid: number, path: string, perms: Perms, tx = 0): void {
    this.as(domid).setPerms(path, perms, tx);
  }

  /** {@link XenStoreConnection.transactionStart} as `domid`. */
  transactionStart(domid: number): number {
    return this.as(domid).transactionStart();
  }

  /** {@link XenStoreConnection.transactionEnd} as `domid`. */
  transactionEnd(domid: number, tx: number, commit: boolean): void {
    this.as(domid).transactionEnd(tx, commit);
  }

  /** {@link XenStoreConnection.watch} as `domid`. */
  watch(domid: number, path: string, token: string, callback: WatchCallback): void {
    this.as(domid).watch(path, token, callback);
  }

  /** {@link XenStoreConnection.unwatch} as `domid`. */
  unwatch(domid: number, path: string, token: string): void {
    this.as(domid).unwatch(path, token);
  }
}

/** A domain id the wire can carry, at least `min`; EINVAL otherwise. */
function checkDomid(domid: number, min: number): number {
  const limit = min === 0 ? MAX_DOMID : DOMID_FIRST_RESERVED - 1;
  if (!Number.isInteger(domid) || domid < min || domid > limit) {
    throw new XenStoreError("EINVAL", `${domid} is not a domain id (${min}..${limit})`);
  }
  return domid;
}
