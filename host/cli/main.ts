#!/usr/bin/env node
/** The `tandem` executable: runs the CLI on this process's arguments and exits with its code. */

import { reportError, runCli } from "./commands.ts";

const io = { out: (line: string) => console.log(line), err: (line: string) => console.error(line) };
let code: number;
try {
  code = await runCli(process.argv.slice(2), io);
} catch (error) {
  code = reportError(error, io, undefined);
}
process.exitCode = code;
