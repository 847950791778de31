/**
 * What a xenbus backend and frontend share: an own directory and the other side's, watches that
 * drive a reaction, and the writes of the own state.
 *
 * Reactions are level-triggered: every watch event (the one each watch fires when it is set
 * included) runs {@link XenbusEndpoint.step} until it has nothing more to do, and a step looks at
 * the states as they are in the store now, never at which event woke it. So coalesced or
 * repeated events, and changes made while a device callback was running, are handled alike.
 * Steps never overlap: events that arrive during one make the loop run again after it.
 */

import { ErrorCode, TandemError } from "../../errors.ts";
import { domainPath } from "../xenstore/path.ts";
import { writeKeys, type XenbusKeys } from "./keys.ts";
import { XenbusState, stateName } from "./states.ts";
import { inTransaction, readState, type XenbusStore } from "./xenbus-store.ts";

/** Steps one wake-up may take; each is a state change, and a device walks at most a few. */
const MAX_STEPS_PER_WAKE = 16;
/** Longest error text written to the error node (xenstored's unprivileged value quota is 2048). */
const MAX_ERROR_TEXT = 1024;

let nextToken = 1;

/** Options both ends take. */
export interface XenbusEndpointOptions {
  /** Where an error of a step goes (after the endpoint has written it to xenstore and closed); default console.error. */
  onError?: (error: unknown) => void;
}

/** One side of a xenbus device. */
export abstract class XenbusEndpoint {
  /** This side's directory. */
  readonly path: string;
  protected readonly store: XenbusStore;
  readonly #role: string;
  readonly #reportError: (error: unknown) => void;
  readonly #watches: { path: string; token: string }[] = [];
  readonly #waiters = new Set<{ state: XenbusState; resolve: () => void }>();
  #state: XenbusState = XenbusState.Unknown;
  #running = false;
  #again = false;
  #stopped = false;

  protected constructor(role: string, store: XenbusStore, path: string, options: XenbusEndpointOptions) {
    this.#role = role;
    this.store = store;
    this.path = path;
    const report = (error: unknown) => console.error(`xenbus ${role} ${path}:`, error);
    const onError = options.onError ?? report;
    // A throwing onError must not become an unhandled rejection of the reaction loop.
    this.#reportError = (error) => {
      try {
        onError(error);
      } catch (secondary) {
        report(secondary);
      }
    };
  }

  /** This side's state, as it last wrote or adopted it. */
  get state(): XenbusState {
    return this.#state;
  }

  /** Whether {@link stop} ran (or the device was removed). */
  get stopped(): boolean {
    return this.#stopped;
  }

  /** Resolves once the state is `state` (now or later); E_TIMEOUT after `ms` milliseconds. */
  reached(state: XenbusState, ms = 5000): Promise<void> {
    if (this.#state === state) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const waiter = {
        state,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(waiter);
        reject(new TandemError(ErrorCode.Timeout, `xenbus ${this.#role} ${this.path} did not reach ${stateName(state)} within ${ms} ms (it is ${stateName(this.#state)})`));
      }, ms);
      this.#waiters.add(waiter);
    });
  }

  /** Stops reacting: removes the watches. The directories stay as they are. */
  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    for (const { path, token } of this.#watches.splice(0)) this.store.unwatch(path, token);
  }

  /** One reaction to the store as it is now; true if it changed something (then the loop steps again). */
  protected abstract step(): Promise<boolean>;

  /** Sets the state that was read from the store at start, without writing it. */
  protected adopt(state: XenbusState): void {
    this.#state = state;
    for (const waiter of this.#waiters) {
      if (waiter.state === state) {
        this.#waiters.delete(waiter);
        waiter.resolve();
      }
    }
  }

  /**
   * Writes `next` as this side's state, with `keys` under this directory, in one transaction
   * retried on EAGAIN. The transaction reads the state first: if someone else changed it since
   * this side last looked (a toolstack's unplug while a callback ran), nothing is written and
   * false returned, so the next step sees the change.
   */
  protected setState(next: XenbusState, keys: XenbusKeys = {}): boolean {
    const expected = this.#state;
    const written = inTransaction(this.store, (tx) => {
      if (readState(this.store, `${this.path}/state`, tx) !== expected) return false;
      writeKeys(this.store, this.path, keys, tx);
      this.store.write(`${this.path}/state`, String(next), tx);
      return true;
    });
    if (written) this.adopt(next);
    return written;
  }

  /** Sets watches on `paths`; each fires once now, which runs the first step. */
  protected watch(paths: readonly string[]): void {
    for (const path of paths) {
      const token = `tandem-xenbus-${this.#role}-${nextToken++}`;
      this.store.watch(path, token, () => this.wake());
      this.#watches.push({ path, token });
    }
  }

  /** Runs steps now (or after the running ones). */
  protected wake(): void {
    if (this.#stopped) return;
    if (this.#running) {
      this.#again = true;
      return;
    }
    this.#running = true;
    void this.#run();
  }

  /**
   * Reports a failure as Linux's xenbus_dev_fatal does: the text goes to
   * `<home>/error/<this directory relative to home>/error`, this side goes Closing if it may,
   * and `onError` hears of it.
   */
  #fail(error: unknown, close: () => void): void {
    try {
      const home = domainPath(this.store.domid);
      const relative = this.path.startsWith(`${home}/`) ? this.path.slice(home.length + 1) : this.path.slice(1);
      const text = error instanceof Error ? error.message : String(error);
      this.store.write(`${home}/error/${relative}/error`, text.slice(0, MAX_ERROR_TEXT));
      close();
    } catch (secondary) {
      this.#reportError(secondary);
    }
    this.#reportError(error);
  }

  async #run(): Promise<void> {
    try {
      do {
        this.#again = false;
        for (let steps = 0; steps < MAX_STEPS_PER_WAKE && !this.#stopped; steps++) {
          if (!(await this.step())) break;
        }
      } while (this.#again && !this.#stopped);
    } catch (error) {
      this.#fail(error, () => this.closeAfterError());
    } finally {
      this.#running = false;
    }
    // Events that came during a failed step still deserve a look.
    if (this.#again) this.wake();
  }

  /** Moves this side to Closing after a failed step, if its state machine allows it. */
  protected abstract closeAfterError(): void;
}
