/**
 * What a long-running command shows: the guest's output (stdout), one log line per event
 * (stderr, timestamped, whether or not a terminal is attached), and a status line redrawn in
 * place on a terminal's stderr. On a terminal the status line is erased before any other line
 * is written and redrawn after it, so it never mixes with them.
 */

import type { Output } from "./output.ts";
import type { StatusStream } from "./progress.ts";

/** Moves to the start of the line and erases it (ANSI CSI EL). */
const CLEAR_LINE = "\r\x1b[K";

/** A command's console. */
export class CommandConsole {
  readonly #io: Output;
  readonly #name: string;
  readonly #stream: StatusStream;
  readonly #tty: boolean;
  #status = "";

  /** `name` prefixes the log lines ("secondary"); `quietStatus` suppresses the status line (e.g. under --json). */
  constructor(io: Output, name: string, options: { quietStatus?: boolean } = {}) {
    this.#io = io;
    this.#name = name;
    this.#stream = io.status ?? process.stderr;
    this.#tty = this.#stream.isTTY === true && options.quietStatus !== true;
  }

  /** A line of the command's own output (stdout). */
  out(line: string): void {
    this.#around(() => this.#io.out(line));
  }

  /** A log line for `event` ("listening", "took over"), with details: `2026-12-07T19:40:00.123Z secondary: took over: from checkpoint 9 ...`. */
  log(event: string, detail?: string): void {
    const line = `${new Date().toISOString()} ${this.#name}: ${event}${detail ? `: ${detail}` : ""}`;
    this.#around(() => this.#io.err(line));
  }

  /** A line for stderr as it is (another process's log line, say). */
  err(line: string): void {
    this.#around(() => this.#io.err(line));
  }

  /** Replaces the status line (shown on a terminal only); "" erases it. */
  status(text: string): void {
    if (!this.#tty) return;
    this.#status = text;
    this.#stream.write(`${CLEAR_LINE}${text}`);
  }

  /** Erases the status line for good. */
  end(): void {
    this.status("");
  }

  #around(write: () => void): void {
    if (this.#tty && this.#status !== "") this.#stream.write(CLEAR_LINE);
    write();
    if (this.#tty && this.#status !== "") this.#stream.write(this.#status);
  }
}
