/**
 * `tandem img convert [-f FMT] [-O FMT] [-o OPTIONS] [-B BACKING [-F BACKING_FMT]] SRC DST`: a new
 * image DST holding what a guest sees of SRC (its whole backing chain), kept sparse where SRC
 * reads as zeros or, with -B, where DST's backing file already holds the same bytes. A progress
 * line shows on a terminal. DST is flushed and closed at the end; if anything fails, the partly
 * written DST is removed.
 */

import { existsSync, rmSync } from "node:fs";
import { ErrorCode, TandemError } from "../../errors.ts";
import type { Disk } from "../../disk/disk.ts";
import type { DiskCreateOptions, DiskOpenOptions } from "../../disk/format.ts";
import { createImage, openDisk } from "../../disk/registry.ts";
import { progressLine, type StatusStream } from "../progress.ts";
import { expectPositionals, knownFormat, parseImgArgs } from "./arguments.ts";
import { inspectBacking } from "./backing.ts";
import { parseImageOptions } from "./create-options.ts";
import { copySparse } from "./sparse-copy.ts";

/** The usage line. */
export const CONVERT_SYNOPSIS = "[-f FMT] [-O FMT] [-o OPTIONS] [-B BACKING [-F FMT]] SRC DST";

/**
 * Runs `tandem img convert`, drawing progress on `status` if it is a terminal; returns the exit
 * code. Like qemu-img convert it prints nothing on success.
 */
export function imgConvert(args: readonly string[], status: StatusStream = process.stderr): number {
  const { values, positionals } = parseImgArgs("convert", args, {
    format: { type: "string", short: "f" },
    "output-format": { type: "string", short: "O", default: "raw" },
    options: { type: "string", short: "o", multiple: true, default: [] },
    backing: { type: "string", short: "B" },
    "backing-format": { type: "string", short: "F" },
  });
  const [sourcePath, targetPath] = expectPositionals("convert", positionals, 2, 2, CONVERT_SYNOPSIS);
  const targetFormat = knownFormat(values["output-format"], "-O");
  const imageOptions = parseImageOptions(values.options);
  const sourceOptions: DiskOpenOptions = { readOnly: true };
  if (values.format !== undefined) sourceOptions.format = knownFormat(values.format, "-f");
  if (values["backing-format"] !== undefined && values.backing === undefined) {
    throw new TandemError(ErrorCode.BadArgument, "img convert: -F names the backing file's format; it needs -B BACKING");
  }
  if (values["backing-format"] !== undefined) knownFormat(values["backing-format"], "-F");
  if (existsSync(targetPath)) {
    throw new TandemError(ErrorCode.DiskIo, `${targetPath} already exists; img convert does not overwrite images: remove it or choose another name`);
  }

  const source = openDisk(sourcePath, sourceOptions);
  try {
    const create: DiskCreateOptions = { size: source.size, ...imageOptions };
    if (values.backing !== undefined) {
      create.backingFile = values.backing;
      create.backingFormat = inspectBacking(targetPath, values.backing, values["backing-format"]).format;
    }
    writeImage(targetPath, targetFormat, create, (target) => {
      const progress = progressLine(`converting ${sourcePath}`, source.size, status);
      try {
        copySparse(source, target, (done) => progress.update(done));
      } finally {
        progress.end();
      }
    });
  } finally {
    source.close();
  }
  return 0;
}

/** Creates the image at `path`, lets `fill` write it, then flushes and closes it; removes it if any step fails. */
function writeImage(path: string, format: string, options: DiskCreateOptions, fill: (target: Disk) => void): void {
  let target: Disk | null = null;
  try {
    createImage(path, format, options);
    target = openDisk(path, { format });
    fill(target);
    target.flush();
    const closing = target;
    target = null;
    closing.close();
  } catch (error) {
    try {
      target?.close();
    } catch {
      // The image is being removed; the first error is the one to report.
    }
    rmSync(path, { force: true });
    throw error;
  }
}

