/**
 * `tandem img`: disk images from the command line, after qemu-img: create, info, check, convert
 * and map, over every format in the registry (host/disk/registry.ts). Errors print as
 * `tandem: ...`; usage errors exit 2, other failures 1 (check has its own codes besides).
 */

import { ErrorCode, TandemError } from "../errors.ts";
import { imgCheck } from "./img/check.ts";
import { imgConvert } from "./img/convert.ts";
import { imgCreate } from "./img/create.ts";
import { imgInfo } from "./img/info.ts";
import { imgMap } from "./img/map.ts";
import { usageLine, type Command } from "./options.ts";
import type { Output } from "./output.ts";
import type { StatusStream } from "./progress.ts";

/** The img subcommands, by the word after `img`. */
export const IMG_COMMANDS: readonly Command[] = [imgCreate, imgInfo, imgCheck, imgConvert, imgMap];

/** The `tandem img` part of the help text. */
export const IMG_USAGE = IMG_COMMANDS.map((c) => `  ${usageLine(c.spec)}\n${indent(c.spec.summary)}`).join("\n");

function indent(text: string): string {
  return text.split("\n").map((line) => `      ${line}`).join("\n");
}

/** Runs `tandem img <subcommand>`; progress lines go to `status` if it is a terminal. Returns the exit code. */
export function imgCommand(args: readonly string[], io: Output, status: StatusStream = io.status ?? process.stderr): number {
  const [subcommand, ...rest] = args;
  if (subcommand === "--help" || subcommand === "-h" || subcommand === "help") {
    io.out(`Usage:\n${IMG_USAGE}\n\nRun 'tandem img SUBCOMMAND --help' for its options.`);
    return 0;
  }
  try {
    const command = IMG_COMMANDS.find((c) => c.spec.name === `img ${subcommand}`);
    if (command === undefined) {
      throw new TandemError(ErrorCode.BadArgument, subcommand === undefined ? "img needs a subcommand" : `unknown img subcommand '${subcommand}'`);
    }
    // Every img subcommand is synchronous.
    return command.run(rest, { ...io, status }) as number;
  } catch (error) {
    if (!(error instanceof TandemError)) throw error;
    if (error.code !== ErrorCode.BadArgument) {
      io.err(`tandem: ${error.message}`);
      return 1;
    }
    io.err(`tandem: ${error.message}\nRun 'tandem img --help' for usage.`);
    return 2;
  }
}
