/**
 * xenstore transactions (docs/misc/xenstore.txt, "Transactions"). A transaction works on a
 * snapshot of the tree taken when it started (a reference: trees are immutable). It remembers
 * every node its answers and edits depended on, with its generation in the snapshot, and logs
 * its edits. Its commit
 * fails with EAGAIN if any of those nodes has changed in the store since; otherwise the edits are
 * replayed onto the store as it is now, all or nothing.
 */

import type { Caller } from "./perms.ts";
import { XenStoreError } from "./xs-error.ts";
import type { EditContext, Tree, TreeEdit, XsNode } from "./tree.ts";

/** Limits on transactions; the node limit applies to unprivileged callers only. */
export interface TransactionLimits {
  /** Transactions open at once on one connection (xenstored quota-max-transaction 10); else ENOSPC. */
  maxTransactionsPerConnection: number;
  /** Nodes one unprivileged transaction may touch; else ENOSPC. */
  maxTransactionNodes: number;
}

/** The defaults of {@link TransactionLimits}. */
export const DEFAULT_TRANSACTION_LIMITS: TransactionLimits = { maxTransactionsPerConnection: 10, maxTransactionNodes: 1024 };

/** Generation recorded for a node that did not exist. */
const ABSENT = -1;

/** One open transaction. */
export class Transaction {
  /** The tx_id clients use. */
  readonly id: number;
  /** The transaction's own view: the snapshot plus its edits. */
  tree: Tree;
  readonly #snapshot: Tree;
  readonly #caller: Caller;
  readonly #maxNodes: number;
  /** Path → generation in the snapshot (ABSENT if it did not exist there). */
  readonly #seen = new Map<string, number>();
  readonly #edits: TreeEdit[] = [];

  constructor(id: number, snapshot: Tree, caller: Caller, limits: TransactionLimits) {
    this.id = id;
    this.tree = snapshot;
    this.#snapshot = snapshot;
    this.#caller = caller;
    this.#maxNodes = limits.maxTransactionNodes;
  }

  /**
   * Records a path a result depended on. What counts is the node as the snapshot had it, not as
   * this transaction's own edits left it: the store is compared with the snapshot at commit.
   */
  observe(path: string): void {
    if (this.#seen.has(path)) return;
    if (!this.#caller.privileged && this.#seen.size >= this.#maxNodes) {
      throw new XenStoreError("ENOSPC", `transaction ${this.id} touched more than ${this.#maxNodes} nodes`);
    }
    this.#seen.set(path, generationOf(this.#snapshot.lookup(path)));
  }

  /** Logs an edit already applied to {@link tree}, to replay at commit. */
  logged(edit: TreeEdit): void {
    this.#edits.push(edit);
  }

  /** The edits, in order. */
  get edits(): readonly TreeEdit[] {
    return this.#edits;
  }

  /** The first node this transaction depended on that `current` has changed, if any. */
  conflict(current: Tree): string | undefined {
    for (const [path, gen] of this.#seen) {
      if (generationOf(current.lookup(path)) !== gen) return path;
    }
    return undefined;
  }

  /** An edit context that records into this transaction. */
  context(base: Omit<EditContext, "observe">): EditContext {
    return { caller: base.caller, limits: base.limits, nextGen: base.nextGen, observe: (path) => this.observe(path) };
  }
}

function generationOf(node: XsNode | undefined): number {
  return node === undefined ? ABSENT : node.gen;
}

/** The transactions of one connection. */
export class TransactionTable {
  readonly #open = new Map<number, Transaction>();
  readonly #limits: TransactionLimits;

  constructor(limits: TransactionLimits) {
    this.#limits = limits;
  }

  /** Opens a transaction with id `id` (chosen by the store, unique among all open ones). */
  start(id: number, snapshot: Tree, caller: Caller): Transaction {
    if (this.#open.size >= this.#limits.maxTransactionsPerConnection) {
      throw new XenStoreError("ENOSPC", `already ${this.#open.size} transactions open on this connection (the limit)`);
    }
    const transaction = new Transaction(id, snapshot, caller, this.#limits);
    this.#open.set(id, transaction);
    return transaction;
  }

  /** The open transaction `id`; ENOENT if there is none. */
  get(id: number): Transaction {
    const transaction = this.#open.get(id);
    if (transaction === undefined) throw new XenStoreError("ENOENT", `no transaction ${id} is open on this connection`);
    return transaction;
  }

  /** Forgets transaction `id` (ended). */
  delete(id: number): void {
    this.#open.delete(id);
  }

  /** Forgets every transaction (connection closed or RESET_WATCHES). */
  clear(): void {
    this.#open.clear();
  }

  /** The ids of the open transactions. */
  ids(): number[] {
    return [...this.#open.keys()];
  }
}
