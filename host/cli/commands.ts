/** The `tandem` command line: parses arguments and dispatches to a command. */

import { VERSION } from "../wasm/embedded.generated.ts";
import { demoCommand } from "./demo.ts";
import { IMG_USAGE, imgCommand } from "./img-command.ts";
import { migrateCommand, primaryCommand, restoreCommand, saveCommand, secondaryCommand } from "./replication-commands.ts";
import { formatSelftest, selftest } from "./selftest.ts";
import { SERVE_USAGE, serveCommand } from "./serve-command.ts";
import { xenstoredCommand } from "./xenstored-command.ts";

/** Where a command writes: stdout and stderr lines. */
export interface Output {
  out(line: string): void;
  err(line: string): void;
}

/** The help text. */
export const USAGE = `tandem ${VERSION}: fault tolerance and live migration for emulator guests

Usage:
  tandem demo [options]      the main job: replicate the built-in guest to a standby, kill -9
                             the primary, watch the standby take over with no gap in its output
      --interval MS  checkpoint every MS (50)      --duration S  run for S seconds (6)
      --kill-after S kill the primary S seconds after its first checkpoint (3)
      --no-kill      stop the primary cleanly
      --verify-state compare the standby with the primary's checkpoint, byte for byte (by hash)
      --json         print one JSON summary
  tandem primary --connect ADDR [--interval MS] [--compress] [guest options] [--json]
  tandem secondary --listen ADDR [--heartbeat MS] [guest options] [--json]
                             replicate the built-in guest between two processes
                             (ADDR: PORT, HOST:PORT or a Unix socket path)
  tandem migrate --connect ADDR [--run S] [--max-downtime MS] [guest options] [--json]
                             run the built-in guest S seconds (its output then not shown),
                             then migrate it live to a \`tandem secondary --listen ADDR\`
  tandem save FILE [--run S] [guest options] [--json]
  tandem restore FILE [--run S] [guest options] [--json]
                             save the built-in guest after S seconds; restore it and run on
  Guest options (both sides of a pair, or a save and its restore, need the same):
      --guest v86|reference  the built-in guest in the v86 PC emulator (default), or the
                             reference machine written in TypeScript (no emulator)
      --memory MIB   guest RAM (32)                --hz N  v86 guest ticks per second (20)
      --dirty F      fraction of RAM pages written per tick (0.001)
${IMG_USAGE}
${SERVE_USAGE}
  tandem xenstored --socket PATH
                             serve a xenstore on the Unix socket PATH (xs_wire protocol), for
                             Xen's xenstore-utils (XENSTORED_PATH=PATH) and frontends; runs
                             until SIGINT/SIGTERM, then removes the socket
  tandem selftest [--json]   load every kernel flavor, check each on known answers,
                             report which is in use and whether SIMD is
  tandem --version           print the version
  tandem --help              print this help

Environment:
  TANDEM_KERNELS=simd|scalar|ts   force a kernel flavor (default: simd where supported)`;

/** Runs the CLI on `args`; returns the exit code (0 ok, 1 failure, 2 usage error). */
export function runCli(args: readonly string[], io: Output): number | Promise<number> {
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
  if (command === "demo") return demoCommand(rest, io);
  if (command === "primary") return primaryCommand(rest, io);
  if (command === "secondary") return secondaryCommand(rest, io);
  if (command === "migrate") return migrateCommand(rest, io);
  if (command === "save") return saveCommand(rest, io);
  if (command === "restore") return restoreCommand(rest, io);
  if (command === "xenstored") return xenstoredCommand(rest, io);
  if (command === "img") return imgCommand(rest, io);
  if (command === "serve") return serveCommand(rest, io);
  return usageError(io, `unknown command '${command}'`);
}

function usageError(io: Output, message: string): number {
  io.err(`tandem: ${message}\nRun 'tandem --help' for usage.`);
  return 2;
}
