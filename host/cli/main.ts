#!/usr/bin/env node
/** The `tandem` command. */

import { TandemError } from "../errors.ts";
import { VERSION } from "../wasm/embedded.generated.ts";
import { formatSelftest, selftest } from "./selftest.ts";

const USAGE = `tandem ${VERSION}: fault tolerance and live migration for emulator guests

Usage:
  tandem selftest [--json]   load every kernel flavor, check each on known answers,
                             report which is in use and whether SIMD is
  tandem --version           print the version
  tandem --help              print this help

Environment:
  TANDEM_KERNELS=simd|scalar|ts   force a kernel flavor (default: simd where supported)
`;

/** Runs the CLI on `args`; returns the exit code. */
export function main(args: readonly string[]): number {
  const [command, ...rest] = args;
  if (command === undefined || command === "--help" || command === "-h" || command === "help") {
    console.log(USAGE);
    return command === undefined ? 2 : 0;
  }
  if (command === "--version" || command === "-V") {
    console.log(VERSION);
    return 0;
  }
  if (command === "selftest") {
    const unknown = rest.filter((a) => a !== "--json");
    if (unknown.length > 0) return usageError(`selftest: unknown option ${unknown[0]}`);
    const report = selftest();
    console.log(rest.includes("--json") ? JSON.stringify(report) : formatSelftest(report));
    return report.ok ? 0 : 1;
  }
  return usageError(`unknown command '${command}'`);
}

function usageError(message: string): number {
  console.error(`tandem: ${message}\nRun 'tandem --help' for usage.`);
  return 2;
}

try {
  process.exitCode = main(process.argv.slice(2));
} catch (error) {
  console.error(error instanceof TandemError ? `tandem: ${error.message}` : error);
  process.exitCode = 1;
}
