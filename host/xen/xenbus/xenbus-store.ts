/**
 * How xenbus talks to xenstore: the part of a {@link XenStoreConnection} it uses (so a test or an
 * embedder can stand between them), transactions retried on EAGAIN, and reads of keys and states
 * that may be missing.
 */

import { ErrorCode, TandemError } from "../../errors.ts";
import type { XenStoreConnection } from "../xenstore/store.ts";
import { XenStoreError } from "../xenstore/xs-error.ts";
import { XenbusState, parseXenbusState } from "./states.ts";

/** The xenstore operations xenbus needs, as one domain. */
export type XenbusStore = Pick<
  XenStoreConnection,
  "domid" | "readString" | "write" | "mkdir" | "rm" | "setPerms" | "transactionStart" | "transactionEnd" | "watch" | "unwatch"
>;

/**
 * Commits before giving up on EAGAIN. xenstored answers EAGAIN only when another change touched
 * what the transaction read, so a retry loop ends as soon as the others pause; the bound keeps a
 * storm of writers from holding the caller forever.
 */
export const MAX_TRANSACTION_ATTEMPTS = 64;

/**
 * Runs `body` in a transaction and commits it, running it again from the start whenever the
 * commit answers EAGAIN (up to `attempts` times; then the EAGAIN error is thrown). If `body` throws,
 * the transaction is aborted and the error rethrown.
 */
export function inTransaction<T>(store: XenbusStore, body: (tx: number) => T, attempts = MAX_TRANSACTION_ATTEMPTS): T {
  if (!Number.isInteger(attempts) || attempts < 1) throw new TandemError(ErrorCode.BadArgument, `transaction attempts ${attempts}: expected at least 1`);
  for (let attempt = 1; ; attempt++) {
    const tx = store.transactionStart();
    let result: T;
    try {
      result = body(tx);
    } catch (error) {
      abort(store, tx);
      throw error;
    }
    try {
      store.transactionEnd(tx, true);
      return result;
    } catch (error) {
      if (!(error instanceof XenStoreError && error.errno === "EAGAIN") || attempt >= attempts) throw error;
    }
  }
}

/** The key's value, or undefined when the node does not exist. Other refusals (EACCES) are thrown. */
export function readOptional(store: XenbusStore, path: string, tx = 0): string | undefined {
  try {
    return store.readString(path, tx);
  } catch (error) {
    if (error instanceof XenStoreError && error.errno === "ENOENT") return undefined;
    throw error;
  }
}

/**
 * A side's state from its `state` node: Unknown when the node is missing or unreadable (a removed
 * directory answers EACCES to a domain that cannot read what is left above it), as Linux's
 * xenbus_read_driver_state does.
 */
export function readState(store: XenbusStore, path: string, tx = 0): XenbusState {
  try {
    return parseXenbusState(store.readString(path, tx));
  } catch (error) {
    if (error instanceof XenStoreError && (error.errno === "ENOENT" || error.errno === "EACCES")) return XenbusState.Unknown;
    throw error;
  }
}

function abort(store: XenbusStore, tx: number): void {
  try {
    store.transactionEnd(tx, false);
  } catch {
    // The body's error is the one to report; a failed abort leaves nothing behind (the id is freed either way).
  }
}
