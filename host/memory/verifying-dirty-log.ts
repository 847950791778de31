/**
 * A dirty log that checks write tracking against the truth: it runs the emulator's marking log
 * and a detecting log (the compare of all of RAM against a shadow) side by side, and every
 * collect fails with E_TRACKING_MISSED, naming the page, if the compare found a page changed
 * that the tracker did not report. A tracker may report more than changed (a write of the same
 * value, or a page written and written back); that is counted, never an error.
 *
 * It costs a full compare per checkpoint, so it is for tests and for checking a new emulator
 * build, not for production (where a periodic scrub would do the same check now and then).
 */

import { ErrorCode, TandemError } from "../errors.ts";
import type { DetectingDirtyLog } from "./detecting-dirty-log.ts";
import { DirtyLogBase, type DirtyLog } from "./dirty-log.ts";
import { PAGE_SIZE } from "./guest-memory.ts";

/** Names the pages the verifier reports: how page `page` was last written, as far as the tracker knows. */
export type LastWriteOf = (page: number) => string;

/** What the verifier has seen since it was made. */
export interface VerifyCounts {
  /** Collects checked (full ones are not: they report every page by definition). */
  checked: number;
  /** Pages the tracker reported. */
  tracked: number;
  /** Pages the compare found changed. */
  changed: number;
  /** Pages reported by the tracker that the compare found unchanged. */
  overMarked: number;
}

/** Most pages named in one failure's message. */
const NAMED = 8;

/** A dirty log that reports the tracker's pages after checking them against a compare. */
export class VerifyingDirtyLog extends DirtyLogBase {
  readonly pageCount: number;
  readonly counts: VerifyCounts = { checked: 0, tracked: 0, changed: 0, overMarked: 0 };
  readonly #tracker: DirtyLog;
  readonly #detector: DetectingDirtyLog;
  readonly #lastWrite: LastWriteOf;

  constructor(tracker: DirtyLog, detector: DetectingDirtyLog, lastWrite: LastWriteOf = () => "no record of its writes") {
    super();
    if (tracker.pageCount !== detector.pageCount) {
      throw new TandemError(ErrorCode.BadArgument, `a tracker of ${tracker.pageCount} pages cannot be verified by a compare of ${detector.pageCount}`);
    }
    this.pageCount = tracker.pageCount;
    this.#tracker = tracker;
    this.#detector = detector;
    this.#lastWrite = lastWrite;
  }

  /** The detecting log's shadow: the RAM as of the last collect. */
  shadow(): Uint8Array {
    return this.#detector.shadow();
  }

  protected onArm(): void {
    this.#tracker.arm();
    this.#detector.arm();
  }

  protected take(full: boolean): Uint32Array {
    // The tracker first: the compare copies changed pages into its shadow, not into RAM, so
    // the order changes nothing the tracker sees, and a failure below leaves both collected.
    const tracked = this.#tracker.collect();
    const changed = this.#detector.collect();
    if (full) return tracked;
    this.counts.checked++;
    this.counts.tracked += tracked.length;
    this.counts.changed += changed.length;
    const marked = new Set(tracked);
    const missed = changed.filter((page) => !marked.has(page));
    this.counts.overMarked += tracked.length - (changed.length - missed.length);
    if (missed.length > 0) {
      // Re-arm: the next collect reports every page, so a caller that goes on stays correct.
      this.arm();
      const named = Array.from(missed.subarray(0, NAMED), (page) =>
        `page ${page} (guest-physical 0x${(page * PAGE_SIZE).toString(16)}; last write: ${this.#lastWrite(page)})`);
      throw new TandemError(ErrorCode.TrackingMissed,
        `write tracking missed ${missed.length} changed page(s) in epoch ${this.epoch}: ${named.join(", ")}${missed.length > NAMED ? ", ..." : ""}`);
    }
    return tracked;
  }
}
