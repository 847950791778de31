/**
 * The `tandem` command line: finds the subcommand and runs it. Each subcommand declares its
 * options as a table (options.ts), which gives it its parser and its `--help`. Errors end here:
 * a usage error (E_BAD_ARGUMENT) prints its message and a pointer to the help, exit status 2;
 * a bad guest file or guest flag (E_GUEST_FILE) prints its message, exit status 2 too;
 * any other error prints its message, exit status 1. No stack trace, unless TANDEM_DEBUG=1 or
 * the error is not one tandem or the system raised on purpose (a bug, worth its stack).
 */

import { ErrorCode, TandemError } from "../errors.ts";
import { VERSION } from "../wasm/embedded.generated.ts";
import { demoCommand } from "./demo.ts";
import { IMG_USAGE, imgCommand } from "./img-command.ts";
import { defineCommand, flag, usageLine, type Command } from "./options.ts";
import type { Output } from "./output.ts";
import { migrateCommand, primaryCommand, restoreCommand, saveCommand, secondaryCommand } from "./replication-commands.ts";
import { formatSelftest, selftest } from "./selftest.ts";
import { serveCommand } from "./serve-command.ts";
import { statusCommand } from "./status-command.ts";
import { xenstoredCommand } from "./xenstored-command.ts";

/** `tandem selftest`. */
const selftestCommand = defineCommand({
  name: "selftest",
  summary: "Load every kernel flavor, check each on known answers, and report which is in use and\nwhether SIMD is.",
  options: { json: flag("print the report as JSON") },
}, ({ values }, io) => {
  const report = selftest();
  io.out(values.json ? JSON.stringify(report) : formatSelftest(report));
  return report.ok ? 0 : 1;
});

/** Every subcommand but `img` (which has subcommands of its own), in the order help lists them. */
export const COMMANDS: readonly Command[] = [
  demoCommand, primaryCommand, secondaryCommand, migrateCommand, saveCommand, restoreCommand,
  serveCommand, xenstoredCommand, statusCommand, selftestCommand,
];

/** The help text. */
export const USAGE = `tandem ${VERSION}: fault tolerance and live migration for emulator guests

Usage:
${COMMANDS.map((c) => `  ${usageLine(c.spec)}\n${indent(c.spec.summary)}`).join("\n")}
${IMG_USAGE}
  tandem --version
      print the version
  tandem --help
      print this help

Run 'tandem COMMAND --help' for a command's options and their defaults.

Environment:
  TANDEM_KERNELS=simd|scalar|ts   force a kernel flavor (default: simd where supported)
  TANDEM_DEBUG=1                  print stack traces with errors`;

function indent(text: string): string {
  return text.split("\n").map((line) => `      ${line}`).join("\n");
}

/** Runs the CLI on `args`; returns the exit code (0 ok, 1 failure, 2 usage error). Never throws a TandemError. */
export function runCli(args: readonly string[], io: Output): number | Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined) {
    io.err(USAGE);
    return 2;
  }
  if (name === "--help" || name === "-h" || name === "help") {
    io.out(USAGE);
    return 0;
  }
  if (name === "--version" || name === "-V") {
    io.out(VERSION);
    return 0;
  }
  if (name === "img") return imgCommand(rest, io);
  const command = COMMANDS.find((c) => c.spec.name === name);
  if (command === undefined) return reportError(new TandemError(ErrorCode.BadArgument, `unknown command '${name}'`), io, undefined);
  try {
    const result = command.run(rest, io);
    return typeof result === "number" ? result : result.catch((error: unknown) => reportError(error, io, name));
  } catch (error) {
    return reportError(error, io, name);
  }
}

/** Prints `error` as the CLI reports errors; returns the exit code. */
export function reportError(error: unknown, io: Output, command: string | undefined): number {
  const debug = process.env.TANDEM_DEBUG === "1";
  if (error instanceof TandemError) {
    // A bad guest file is the user's to fix, as a bad option is: exit 2, no pointer to --help.
    const usage = error.code === ErrorCode.BadArgument || error.code === ErrorCode.GuestFile;
    const help = error.code === ErrorCode.BadArgument ? `\nRun 'tandem ${command === undefined ? "" : `${command} `}--help' for usage.` : "";
    io.err(`tandem: ${error.message}${help}${debug ? `\n${error.stack}` : ""}`);
    return usage ? 2 : 1;
  }
  // The system's errors (ECONNREFUSED, ENOENT...) carry a code and a message that says enough.
  const systemError = error instanceof Error && typeof (error as { code?: unknown }).code === "string";
  if (systemError && !debug) {
    io.err(`tandem: ${error.message}`);
    return 1;
  }
  io.err(`tandem: ${error instanceof Error ? error.stack ?? error.message : String(error)}`);
  return 1;
}
