/** The `tandem` command line: parses arguments and dispatches to a command. */

import { VERSION } from "../wasm/embedded.generated.ts";
import { formatSelftest, selftest } from "./selftest.ts";

/** Where a command writes: stdout and stderr lines. */
export interface Output {
  out(line: string): void;
  err(line: string): void;
}

/** The help text. */
export const USAGE = `tandem ${VERSION}: fault tolerance and live migration for emulator guests

Usage:
  tandem selftest [--json]   load every kernel flavor, check each on known answers,
                             report which is in use and whether SIMD is
  tandem --version           print the version
  tandem --help              print this help

Environment:
  TANDEM_KERNELS=simd|scalar|ts   force a kernel flavor (default: simd where supported)`;

/** Runs the CLI on `args`; returns the exit code (0 ok, 1 failure, 2 usage error). */
export function runCli(args: readonly string[], io: Output): number {
  const [command, ...rest] = args;
  if (command === undefined) {
    io.err(USAGE);
    return 2;
  }
  if (command === "--help" || command === "-h" || command === "help") {
    io.out(USAGE);
    return 0;
  }
  if (command === "--version" || command === "-V") {
    io.out(VERSION);
    return 0;
  }
  if (command === "selftest") {
    const unknown = rest.filter((a) => a !== "--json");
    if (unknown.length > 0) return usageError(io, `selftest: unknown option '${unknown[0]}'`);
    const report = selftest();
    io.out(rest.includes("--json") ? JSON.stringify(report) : formatSelftest(report));
    return report.ok ? 0 : 1;
  }
  return usageError(io, `unknown command '${command}'`);
}

function usageError(io: Output, message: string): number {
  io.err(`tandem: ${message}\nRun 'tandem --help' for usage.`);
  return 2;
}
