/**
 * The states of a replicated pair, as one explicit state machine (docs/replication.md, "The
 * pair's states"). The CLI's log, `tandem status` and the metrics all read this one value.
 *
 * ```
 * primary side:
 *   alone ──standby-joined──▶ syncing ──sync-complete──▶ protected
 *   syncing, protected ──standby-lost──▶ alone            (the guest keeps running)
 *   alone, syncing, protected ──lease-lost──▶ fenced      (guest paused, nothing released)
 * standby side:
 *   standing-by ──takeover──▶ alone       (primary lost, pair was protected, witness key won)
 *   standing-by ──rejoined──▶ standing-by (lost its primary without winning: joins again)
 *   fenced ──rejoined──▶ standing-by      (an old primary comes back, as a standby)
 * ```
 *
 * A standby that is only syncing (issue 17's background disk copy) never takes over.
 */

import { ErrorCode, TandemError } from "../errors.ts";

/** Where a host of the pair stands. */
export const PairState = {
  /** Primary, running the guest with no standby: unprotected. */
  Alone: "alone",
  /** Primary with a standby that is still catching up (background disk copy); not yet a failover target. */
  Syncing: "syncing",
  /** Primary with a standby that holds a complete checkpoint and may take over. */
  Protected: "protected",
  /** Primary that lost (or could not confirm) its lease: guest paused, nothing released, never runs again. */
  Fenced: "fenced",
  /** Standby: holds the primary's checkpoints, paused. */
  StandingBy: "standing-by",
} as const;

/** One of the values of {@link PairState}. */
export type PairState = (typeof PairState)[keyof typeof PairState];

/** What happens to a pair. */
export const PairEvent = {
  /** A standby connected and the first checkpoint is on its way. */
  StandbyJoined: "standby-joined",
  /** The standby holds everything: a complete checkpoint and (issue 17) the whole disks. */
  SyncComplete: "sync-complete",
  /** The standby went away (closed, silent, refused). */
  StandbyLost: "standby-lost",
  /** The lease (witness) could not be renewed in time, or the witness names another owner. */
  LeaseLost: "lease-lost",
  /** Standby: the primary was lost, the pair was protected, and this side won the witness key. */
  TakeOver: "takeover",
  /** A fenced primary, or a standby that could not win, joins a primary as standby again. */
  Rejoined: "rejoined",
} as const;

/** One of the values of {@link PairEvent}. */
export type PairEvent = (typeof PairEvent)[keyof typeof PairEvent];

const TRANSITIONS: Readonly<Record<PairState, Partial<Record<PairEvent, PairState>>>> = {
  [PairState.Alone]: { [PairEvent.StandbyJoined]: PairState.Syncing, [PairEvent.LeaseLost]: PairState.Fenced },
  [PairState.Syncing]: {
    [PairEvent.SyncComplete]: PairState.Protected, [PairEvent.StandbyLost]: PairState.Alone, [PairEvent.LeaseLost]: PairState.Fenced,
  },
  [PairState.Protected]: { [PairEvent.StandbyLost]: PairState.Alone, [PairEvent.LeaseLost]: PairState.Fenced },
  [PairState.Fenced]: { [PairEvent.Rejoined]: PairState.StandingBy },
  [PairState.StandingBy]: { [PairEvent.TakeOver]: PairState.Alone, [PairEvent.Rejoined]: PairState.StandingBy },
};

/**
 * The state after `event` in `state`. An event the machine does not allow there is a bug in the
 * caller, not a condition to tolerate: it throws E_PAIR_TRANSITION naming both.
 */
export function nextPairState(state: PairState, event: PairEvent): PairState {
  const next = TRANSITIONS[state]?.[event];
  if (next === undefined) throw new TandemError(ErrorCode.PairTransition, `event '${event}' is not allowed in pair state '${state}'`);
  return next;
}

/** Whether a primary in `state` runs its guest (fenced ones never do; standbys hold theirs paused). */
export function runsGuest(state: PairState): boolean {
  return state === PairState.Alone || state === PairState.Syncing || state === PairState.Protected;
}

/**
 * The current state of one host, with its history of changes for logs and metrics. Every change
 * goes through {@link PairStateMachine.apply}, and listeners see each one.
 */
export class PairStateMachine {
  #state: PairState;
  #since = performance.now();
  readonly #listeners: ((state: PairState, event: PairEvent, previous: PairState) => void)[] = [];

  constructor(initial: PairState) {
    this.#state = initial;
  }

  /** The state now. */
  get state(): PairState {
    return this.#state;
  }

  /** Milliseconds since the last change (or creation). */
  get ageMs(): number {
    return performance.now() - this.#since;
  }

  /** Applies `event` (throws E_PAIR_TRANSITION if illegal here) and tells the listeners. */
  apply(event: PairEvent): PairState {
    const previous = this.#state;
    this.#state = nextPairState(previous, event);
    this.#since = performance.now();
    for (const listener of this.#listeners) listener(this.#state, event, previous);
    return this.#state;
  }

  /** Calls `listener` after every change. */
  onChange(listener: (state: PairState, event: PairEvent, previous: PairState) => void): void {
    this.#listeners.push(listener);
  }
}
