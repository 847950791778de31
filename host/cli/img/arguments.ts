/** Argument parsing shared by the `tandem img` subcommands: bad arguments become usage errors. */

import { parseArgs, type ParseArgsConfig } from "node:util";
import { ErrorCode, TandemError } from "../../errors.ts";
import { formatNames } from "../../disk/registry.ts";

/** The option table of one subcommand, in node:util parseArgs's terms. */
export type ImgOptions = NonNullable<ParseArgsConfig["options"]>;

/**
 * Parses `args` for `tandem img <subcommand>` against `options`: unknown options and missing
 * values become E_BAD_ARGUMENT (a usage error), whatever the runtime's parseArgs throws.
 */
export function parseImgArgs<O extends ImgOptions>(
  subcommand: string,
  args: readonly string[],
  options: O,
): ReturnType<typeof parseArgs<{ args: string[]; options: O; allowPositionals: true; strict: true }>> {
  try {
    return parseArgs({ args: [...args], options, allowPositionals: true, strict: true });
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    throw new TandemError(ErrorCode.BadArgument, `img ${subcommand}: ${message}`);
  }
}

/** `positionals` if there are between `min` and `max` of them, else a usage error quoting `synopsis`. */
export function expectPositionals(subcommand: string, positionals: readonly string[], min: number, max: number, synopsis: string): string[] {
  if (positionals.length < min || positionals.length > max) {
    const problem = positionals.length < min ? "missing arguments" : `unexpected '${positionals.slice(max).join(" ")}'`;
    throw new TandemError(ErrorCode.BadArgument, `img ${subcommand}: ${problem}; usage: tandem img ${subcommand} ${synopsis}`);
  }
  return [...positionals];
}

/** `name` if it is a registered image format, else a usage error listing the known ones. */
export function knownFormat(name: string, option: string): string {
  if (!formatNames().includes(name)) {
    throw new TandemError(ErrorCode.BadArgument, `${option} ${name}: unknown image format; known: ${formatNames().join(", ")}`);
  }
  return name;
}
