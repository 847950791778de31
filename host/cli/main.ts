#!/usr/bin/env node
/** The `tandem` executable: runs the CLI on this process's arguments and exits with its code. */

import { reportError, runCli } from "./commands.ts";

/**
 * Once the command has returned, the process should end by itself; if some handle still holds
 * it (a bug, or a library's timer), it exits anyway after this long rather than hang a service.
 */
const EXIT_GRACE_MS = 2000;

const io = { out: (line: string) => console.log(line), err: (line: string) => console.error(line) };
let code: number;
try {
  code = await runCli(process.argv.slice(2), io);
} catch (error) {
  code = reportError(error, io, undefined);
}
process.exitCode = code;
setTimeout(() => process.exit(code), EXIT_GRACE_MS).unref();
