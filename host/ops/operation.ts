/**
 * The handle of every long operation (replicate, migrate, save, restore), after libxl's
 * asynchronous operations (seed 004): it starts at once and returns a handle with a promise for
 * the result, progress reports, and cancellation through an AbortSignal. Errors carry codes:
 * E_BAD_ARGUMENT (invalid argument), E_FAILED, E_GUEST_TIMEOUT, E_PEER_LOST, E_ABORTED.
 *
 *   const op = startOperation("save", async (ctx) => { ...; ctx.report({ bytes }); ... });
 *   op.onProgress((p) => draw(p));
 *   await op.promise;
 *
 * Cancelling asks the operation to stop at its next check (`ctx.signal`, `ctx.throwIfAborted()`),
 * where it undoes what it must (a migration leaves the source running); the promise then
 * rejects with E_ABORTED. An operation that finishes before it notices the cancellation resolves.
 */

import { ErrorCode, TandemError } from "../errors.ts";

/** What a long operation reports as it goes. */
export interface OpProgress {
  /** What it is doing now, in a word or two ("copying", "iterating", "replicating"). */
  phase: string;
  /** Bytes sent or received so far. */
  bytes: number;
  /** Pages sent or received so far. */
  pages: number;
  /** Pre-copy iterations done (migration). */
  iterations: number;
  /** Checkpoints committed (replication). */
  checkpoints: number;
  /** A background copy (replication's disk copy): bytes copied so far, and to copy in all. */
  copied: number;
  copyTotal: number;
}

/** What the operation's body gets. */
export interface OpContext {
  /** Aborted when the operation is cancelled. */
  readonly signal: AbortSignal;
  /** Updates the progress; listeners hear of it at once. */
  report(update: Partial<OpProgress>): void;
  /** Throws E_ABORTED if the operation was cancelled. */
  throwIfAborted(): void;
}

/** A running operation. */
export interface OpHandle<T> {
  /** The operation's name. */
  readonly name: string;
  /** Settles with the result, or rejects with a coded TandemError. */
  readonly promise: Promise<T>;
  /** The latest progress. */
  readonly progress: Readonly<OpProgress>;
  /** True once the promise has settled. */
  readonly settled: boolean;
  /** Calls `listener` on every report; returns a function that stops it. */
  onProgress(listener: (progress: Readonly<OpProgress>) => void): () => void;
  /** Cancels the operation (as aborting its signal would). */
  abort(reason?: string): void;
}

/** Options of {@link startOperation}. */
export interface OpOptions {
  /** Cancels the operation when aborted. */
  signal?: AbortSignal;
}

/** Starts `body` as a long operation named `name`. */
export function startOperation<T>(name: string, body: (ctx: OpContext) => Promise<T>, options: OpOptions = {}): OpHandle<T> {
  const controller = new AbortController();
  const listeners = new Set<(progress: Readonly<OpProgress>) => void>();
  const progress: OpProgress = { phase: "starting", bytes: 0, pages: 0, iterations: 0, checkpoints: 0, copied: 0, copyTotal: 0 };
  let settled = false;
  const aborted = () => new TandemError(ErrorCode.Aborted, `${name} was cancelled${reasonOf(controller.signal)}`);

  const outer = options.signal;
  const follow = () => controller.abort(outer?.reason);
  if (outer?.aborted) follow();
  else outer?.addEventListener("abort", follow, { once: true });

  const ctx: OpContext = {
    signal: controller.signal,
    report(update) {
      Object.assign(progress, update);
      for (const listener of listeners) listener(progress);
    },
    throwIfAborted() {
      if (controller.signal.aborted) throw aborted();
    },
  };

  const promise = (async () => {
    try {
      ctx.throwIfAborted();
      return await body(ctx);
    } catch (error) {
      if (controller.signal.aborted) throw aborted();
      if (error instanceof TandemError) throw error;
      throw new TandemError(ErrorCode.Failed, `${name} failed: ${error instanceof Error ? error.message : String(error)}`);
    } finally {
      settled = true;
      outer?.removeEventListener("abort", follow);
    }
  })();
  promise.catch(() => {}); // the caller's to handle; never an unhandled rejection here

  return {
    name,
    promise,
    get progress() {
      return progress;
    },
    get settled() {
      return settled;
    },
    onProgress(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    abort(reason) {
      controller.abort(reason);
    },
  };
}

function reasonOf(signal: AbortSignal): string {
  const reason: unknown = signal.reason;
  if (reason === undefined || (reason instanceof Error && reason.name === "AbortError")) return "";
  return `: ${reason instanceof Error ? reason.message : String(reason)}`;
}
