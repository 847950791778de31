/**
 * Where a command writes. In a file of its own so that the commands and their dispatcher
 * (commands.ts), which imports them, do not import each other.
 */

import type { StatusStream } from "./progress.ts";

/** Where a command writes: stdout lines, stderr lines, and a terminal's status line. */
export interface Output {
  out(line: string): void;
  err(line: string): void;
  /** Where progress and status lines are drawn (process.stderr when absent); drawn only on a terminal. */
  status?: StatusStream;
}
