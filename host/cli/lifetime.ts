/**
 * How a long-running command ends: on the first SIGINT or SIGTERM it is asked to stop cleanly
 * (its AbortSignal fires); a second one, while it is stopping, ends the process at once. The
 * handlers are removed when the command is done, so nothing of them outlives it.
 */

/** Exit status after a second interrupt: 128 + SIGINT, as a shell reports it. */
const FORCED_EXIT = 130;

/** The life of one long-running command. */
export class Lifetime {
  readonly #controller = new AbortController();
  readonly #onSignal: (signal: NodeJS.Signals) => void;
  /** The signal that asked the command to stop, once one did. */
  stoppedBy: NodeJS.Signals | undefined;
  readonly #stopped: Promise<NodeJS.Signals>;

  constructor() {
    let stop!: (signal: NodeJS.Signals) => void;
    this.#stopped = new Promise((resolve) => (stop = resolve));
    this.#onSignal = (signal) => {
      if (this.stoppedBy !== undefined) process.exit(FORCED_EXIT);
      this.stoppedBy = signal;
      this.#controller.abort(signal);
      stop(signal);
    };
    process.on("SIGINT", this.#onSignal);
    process.on("SIGTERM", this.#onSignal);
  }

  /** Fires on the first SIGINT or SIGTERM. */
  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  /** Settles with the signal's name on the first SIGINT or SIGTERM. */
  stopped(): Promise<NodeJS.Signals> {
    return this.#stopped;
  }

  /** Removes the handlers. */
  dispose(): void {
    process.off("SIGINT", this.#onSignal);
    process.off("SIGTERM", this.#onSignal);
  }
}
