/**
 * What every dirty log offers, and the one state machine they share.
 *
 * The lesson of Kemari's review (seed 001): if tracking starts after the first full copy,
 * writes that land between the two are lost forever. So a log is armed first, and the first
 * epoch it reports after arming is every page; the caller copies pages only after that.
 *
 *   idle --arm--> armed --collect (all pages)--> tracking --collect (changed pages)--> tracking
 *   any  --arm--> armed        (re-arming forces a full epoch, e.g. for a new standby)
 *   idle --collect--> error E_NOT_ARMED
 */

import { ErrorCode, TandemError } from "../errors.ts";

/** The states of a dirty log. */
export const DirtyLogState = {
  /** Not tracking; nothing can be collected. */
  Idle: "idle",
  /** Tracking; the next collect reports every page. */
  Armed: "armed",
  /** Tracking; collect reports the pages changed since the previous collect. */
  Tracking: "tracking",
} as const;
/** One of {@link DirtyLogState}. */
export type DirtyLogState = (typeof DirtyLogState)[keyof typeof DirtyLogState];

/** What can happen to a dirty log. */
export type DirtyLogEvent = "arm" | "collect";

/** The next state after `event`, or a {@link TandemError} for a transition that is not allowed. */
export function nextDirtyLogState(state: DirtyLogState, event: DirtyLogEvent): DirtyLogState {
  if (event === "arm") return DirtyLogState.Armed;
  if (state === DirtyLogState.Idle) {
    throw new TandemError(ErrorCode.NotArmed, "collect() before arm(): arm the log before the first copy so no write is lost");
  }
  return DirtyLogState.Tracking;
}

/** A record of which guest pages changed, epoch by epoch. */
export interface DirtyLog {
  /** Pages in the guest. */
  readonly pageCount: number;
  /** Where the log is in its life. */
  readonly state: DirtyLogState;
  /** Collects completed since the log was made. */
  readonly epoch: number;
  /** Starts (or restarts) tracking; the next {@link collect} reports every page. */
  arm(): void;
  /**
   * Ends the epoch: returns the indices of pages dirtied in it, ascending, as a new array the
   * caller owns, and starts the next epoch with nothing dirty. Throws E_NOT_ARMED when idle.
   */
  collect(): Uint32Array;
}

/**
 * The bookkeeping every log shares: the state machine and the epoch count. A log supplies
 * what arming does to it and how it takes an epoch's pages.
 */
export abstract class DirtyLogBase implements DirtyLog {
  abstract readonly pageCount: number;
  #state: DirtyLogState = DirtyLogState.Idle;
  #epoch = 0;

  get state(): DirtyLogState {
    return this.#state;
  }

  get epoch(): number {
    return this.#epoch;
  }

  arm(): void {
    this.#state = nextDirtyLogState(this.#state, "arm");
    this.onArm();
  }

  collect(): Uint32Array {
    const full = this.#state === DirtyLogState.Armed;
    this.#state = nextDirtyLogState(this.#state, "collect");
    const pages = this.take(full);
    this.#epoch++; // after the take: a collect that failed delivered no epoch
    return pages;
  }

  /** Called on every arm(), after the state changed. */
  protected abstract onArm(): void;

  /** The epoch's pages; `full` on the first collect after arming, when every page is owed. */
  protected abstract take(full: boolean): Uint32Array;
}
