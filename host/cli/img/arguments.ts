/** Options and operands shared by the `tandem img` subcommands. */

import { ErrorCode, TandemError } from "../../errors.ts";
import { formatNames } from "../../disk/registry.ts";
import { custom, flag, type Option } from "../options.ts";

/** `name` if it is a registered image format, else a usage error listing the known ones. */
export function knownFormat(name: string, option: string): string {
  if (!formatNames().includes(name)) {
    throw new TandemError(ErrorCode.BadArgument, `${option} ${name}: unknown image format; known: ${formatNames().join(", ")}`);
  }
  return name;
}

/** An option naming an image format (-f, -O, -F). */
export function formatOption(short: string, help: string, settings: { default?: string } = {}): Option<string | undefined> {
  return custom("FMT", help, (given) => {
    if (!formatNames().includes(given)) throw new TandemError(ErrorCode.BadArgument, `unknown image format; known: ${formatNames().join(", ")}`);
    return given;
  }, { short, ...settings });
}

/** --json, as qemu-img's --output=json. */
export const JSON_OPTION = flag("print JSON, with qemu-img's field names");
