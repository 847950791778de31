/**
 * `tandem img create -f FMT [-b BACKING [-F BACKING_FMT]] [-o OPTIONS] FILE [SIZE]`: a new empty
 * image. With a backing file and no SIZE, the image is as large as the backing disk. The backing
 * name is recorded as given; its format, when -F is absent, is the one probed from the file.
 */

import { existsSync, rmSync } from "node:fs";
import { ErrorCode, TandemError } from "../../errors.ts";
import type { DiskCreateOptions } from "../../disk/format.ts";
import { createImage } from "../../disk/registry.ts";
import type { Output } from "../commands.ts";
import { expectPositionals, knownFormat, parseImgArgs } from "./arguments.ts";
import { inspectBacking } from "./backing.ts";
import { describeImageOptions, parseImageOptions } from "./create-options.ts";
import { parseSize } from "./size.ts";

/** The usage line. */
export const CREATE_SYNOPSIS = "[-f FMT] [-b BACKING [-F FMT]] [-o OPTIONS] FILE [SIZE]";

/** Runs `tandem img create`; returns the exit code. */
export function imgCreate(args: readonly string[], io: Output): number {
  const { values, positionals } = parseImgArgs("create", args, {
    format: { type: "string", short: "f", default: "raw" },
    backing: { type: "string", short: "b" },
    "backing-format": { type: "string", short: "F" },
    options: { type: "string", short: "o", multiple: true, default: [] },
  });
  const [file, sizeText] = expectPositionals("create", positionals, 1, 2, CREATE_SYNOPSIS);
  const format = knownFormat(values.format, "-f");
  const imageOptions = parseImageOptions(values.options);
  if (values["backing-format"] !== undefined && values.backing === undefined) {
    throw new TandemError(ErrorCode.BadArgument, "img create: -F names the backing file's format; it needs -b BACKING");
  }
  if (values["backing-format"] !== undefined) knownFormat(values["backing-format"], "-F");
  if (sizeText === undefined && values.backing === undefined) {
    throw new TandemError(ErrorCode.BadArgument, `img create: SIZE is missing (needed without -b); usage: tandem img create ${CREATE_SYNOPSIS}`);
  }
  const size = sizeText === undefined ? undefined : parseSize(sizeText, "SIZE");
  if (existsSync(file)) {
    throw new TandemError(ErrorCode.DiskIo, `${file} already exists; img create does not overwrite images: remove it or choose another name`);
  }

  const options: DiskCreateOptions = { size: size ?? 0, ...imageOptions };
  if (values.backing !== undefined) {
    const backing = inspectBacking(file, values.backing, values["backing-format"]);
    options.size = size ?? backing.size;
    options.backingFile = values.backing;
    options.backingFormat = backing.format;
  }
  try {
    createImage(file, format, options);
  } catch (error) {
    // createImage made the file before the format refused the options: leave nothing behind.
    rmSync(file, { force: true });
    throw error;
  }
  const backingText = options.backingFile === undefined ? "" : ` backing_file=${options.backingFile} backing_fmt=${options.backingFormat}`;
  const optionText = describeImageOptions(imageOptions);
  io.out(`Formatting '${file}', fmt=${format} size=${options.size}${backingText}${optionText === "" ? "" : ` ${optionText}`}`);
  return 0;
}
