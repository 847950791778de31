/**
 * A progress line for long CLI operations (`tandem img convert`): on a terminal, one status line
 * redrawn in place with the percentage done and the rate; on anything else, nothing, so that
 * pipes and logs carry only the command's real output.
 */

/** Where the line is drawn: process.stderr, or a stand-in in tests. */
export interface StatusStream {
  /** True on a terminal; the line is drawn only then. */
  readonly isTTY?: boolean;
  write(text: string): unknown;
}

/** A progress line over a known amount of work. */
export interface ProgressLine {
  /** Records that `done` bytes of the total are done; redraws at most every {@link REDRAW_MS}. */
  update(done: number): void;
  /** Erases the line (after success or failure alike). */
  end(): void;
}

/** Redrawing more often than this costs time and shows nothing a reader could follow. */
export const REDRAW_MS = 100;

/** Moves to the start of the line and erases it (ANSI CSI EL). */
const CLEAR_LINE = "\r\x1b[K";

/**
 * A progress line labelled `label` over `total` bytes, drawn on `stream` if it is a terminal.
 * `now` gives milliseconds (a stand-in clock in tests).
 */
export function progressLine(label: string, total: number, stream: StatusStream = process.stderr, now: () => number = () => performance.now()): ProgressLine {
  if (stream.isTTY !== true) return { update: () => {}, end: () => {} };
  const started = now();
  let drawnAt = started;
  let drawn = false;
  return {
    update(done) {
      const at = now();
      if (at - drawnAt < REDRAW_MS && done < total) return;
      drawnAt = at;
      drawn = true;
      const percent = total > 0 ? (Math.min(done, total) / total) * 100 : 100;
      const seconds = Math.max((at - started) / 1000, 0.001);
      stream.write(`${CLEAR_LINE}${label}: ${percent.toFixed(1)}% (${(done / 1e6 / seconds).toFixed(1)} MB/s)`);
    },
    end() {
      if (drawn) stream.write(CLEAR_LINE);
      drawn = false;
    },
  };
}
