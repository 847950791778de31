#!/usr/bin/env node
/** The `tandem` executable: runs the CLI on this process's arguments. */

import { TandemError } from "../errors.ts";
import { runCli } from "./commands.ts";

try {
  process.exitCode = await runCli(process.argv.slice(2), {
    out: (line) => console.log(line),
    err: (line) => console.error(line),
  });
} catch (error) {
  console.error(error instanceof TandemError ? `tandem: ${error.message}` : error);
  process.exitCode = error instanceof TandemError && error.code === "E_BAD_ARGUMENT" ? 2 : 1;
}
