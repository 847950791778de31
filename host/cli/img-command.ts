/**
 * `tandem img`: disk images from the command line, after qemu-img: create, info, check, convert
 * and map, over every format in the registry (host/disk/registry.ts). Errors print as
 * `tandem: ...`; usage errors exit 2, other failures 1 (check has its own codes besides).
 */

import { ErrorCode, TandemError } from "../errors.ts";
import type { Output } from "./commands.ts";
import { CHECK_SYNOPSIS, imgCheck } from "./img/check.ts";
import { CONVERT_SYNOPSIS, imgConvert } from "./img/convert.ts";
import { CREATE_SYNOPSIS, imgCreate } from "./img/create.ts";
import { imgInfo, INFO_SYNOPSIS } from "./img/info.ts";
import { imgMap, MAP_SYNOPSIS } from "./img/map.ts";
import type { StatusStream } from "./progress.ts";

/** The `tandem img` part of the help text. */
export const IMG_USAGE = `  tandem img create ${CREATE_SYNOPSIS}
                             a new empty image: qcow2, cow or raw (the default); SIZE in bytes or
                             with K, M, G, T (512K, 1G); with -b and no SIZE, the backing file's size
      -o OPTIONS     cluster_size=N,lazy_refcounts=on|off (for create and convert)
  tandem img info ${INFO_SYNOPSIS}
                             format, sizes, backing file; --json: the image's facts as JSON
  tandem img check ${CHECK_SYNOPSIS}
                             check (-r: repair) the metadata; exit 0 clean, 2 errors, 3 leaks only,
                             1 check failed, 63 nothing to check (raw)
  tandem img convert ${CONVERT_SYNOPSIS}
                             copy what the guest sees of SRC into a new image DST (raw by default),
                             sparse where SRC reads as zeros or as the backing file given with -B
  tandem img map ${MAP_SYNOPSIS}
                             allocated ranges and where they lie, as qemu-img map (--json: its fields)`;

/** Runs `tandem img <subcommand>`; progress lines go to `status` if it is a terminal. Returns the exit code. */
export function imgCommand(args: readonly string[], io: Output, status: StatusStream = process.stderr): number {
  const [subcommand, ...rest] = args;
  if (subcommand === "--help" || subcommand === "-h" || subcommand === "help") {
    io.out(`Usage:\n${IMG_USAGE}`);
    return 0;
  }
  try {
    switch (subcommand) {
      case "create":
        return imgCreate(rest, io);
      case "info":
        return imgInfo(rest, io);
      case "check":
        return imgCheck(rest, io);
      case "convert":
        return imgConvert(rest, status);
      case "map":
        return imgMap(rest, io);
      default:
        throw new TandemError(ErrorCode.BadArgument, subcommand === undefined ? "img needs a subcommand" : `unknown img subcommand '${subcommand}'`);
    }
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
