/**
 * What a qcow2 check found: counts of errors and leaks and one line per finding, in the spirit
 * of `qemu-img check`'s output. The lines are capped because a hostile image can hold millions of
 * bad entries; the counts never are.
 */

/** The most finding lines a report keeps; past it only a count of the rest is kept. */
export const MAX_FINDING_LINES = 10_000;

/** Counts and lines of one check pass. */
export class Findings {
  /** Inconsistencies that can lose or corrupt data. */
  errors = 0;
  /** Clusters with a refcount higher than their references. */
  leaks = 0;
  readonly #lines: string[] = [];
  #dropped = 0;

  /**
   * Records `count` errors (the same finding reached through `count` paths) under one line. The
   * line may be given as a function, called only if the line is kept (hostile images can produce
   * millions of findings).
   */
  error(line: string | (() => string), count = 1): void {
    this.errors += count;
    this.note(line);
  }

  /** Records one leaked cluster. */
  leak(line: string | (() => string)): void {
    this.leaks++;
    this.note(line);
  }

  /** Adds a line that is not a finding (a repair step). */
  note(line: string | (() => string)): void {
    if (this.#lines.length < MAX_FINDING_LINES) this.#lines.push(typeof line === "string" ? line : line());
    else this.#dropped++;
  }

  /** The lines, with a last one counting those left out. */
  lines(): string[] {
    return this.#dropped === 0 ? [...this.#lines] : [...this.#lines, `(${this.#dropped} more lines not listed)`];
  }
}

/** A 64-bit table entry from its halves, in hex as qemu-img prints entries. */
export function entryHex(hi: number, lo: number): string {
  return hi === 0 ? lo.toString(16) : hi.toString(16) + lo.toString(16).padStart(8, "0");
}

/** `n` as 0x-prefixed hex. */
export function hex(n: number): string {
  return `0x${n.toString(16)}`;
}
