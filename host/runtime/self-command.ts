/**
 * The command line that runs a script on the runtime this process runs on, for starting peers
 * in other processes (a standby, a bench's far end) with the same runtime under test.
 */

import { runtimeName } from "./runtime.ts";

/** argv (program first) that runs `script` with `args` on this runtime. */
export function selfCommand(script: string, args: readonly string[] = []): string[] {
  const exec = process.execPath;
  switch (runtimeName()) {
    case "deno":
      return [exec, "run", "-A", script, ...args];
    case "bun":
      return [exec, "run", script, ...args];
    default:
      // Node 20 runs TypeScript sources through tsx (a dev dependency); built JavaScript as is.
      return script.endsWith(".ts") ? [exec, "--import", "tsx", script, ...args] : [exec, script, ...args];
  }
}
