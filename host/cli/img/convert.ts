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
import { defineCommand, text } from "../options.ts";
import { formatOption } from "./arguments.ts";
import { inspectBacking } from "./backing.ts";
import { IMAGE_OPTIONS, parseImageOptions } from "./create-options.ts";
import { copySparse } from "./sparse-copy.ts";

/**
 * `tandem img convert`, drawing progress on the output's status stream if it is a terminal;
 * returns the exit code. Like qemu-img convert it prints nothing on success.
 */
export const imgConvert = defineCommand({
  name: "img convert",
  operands: "SRC DST",
  minOperands: 2,
  maxOperands: 2,
  summary: "Copy what the guest sees of SRC into a new image DST, sparse where SRC reads as zeros or\nas the backing file given with -B.",
  options: {
    format: formatOption("f", "SRC's format (probed when absent)"),
    "output-format": formatOption("O", "DST's format", { default: "raw" }),
    options: IMAGE_OPTIONS,
    backing: text("BACKING", "the backing file DST overlays", { short: "B" }),
    "backing-format": formatOption("F", "the backing file's format (probed when absent)"),
  },
}, ({ values, operands: [sourcePath, targetPath] }, io) => {
  const status: StatusStream = io.status ?? process.stderr;
  const targetFormat = values["output-format"] ?? "raw";
  const imageOptions = parseImageOptions(values.options);
  const sourceOptions: DiskOpenOptions = { readOnly: true };
  if (values.format !== undefined) sourceOptions.format = values.format;
  if (values["backing-format"] !== undefined && values.backing === undefined) {
    throw new TandemError(ErrorCode.BadArgument, "img convert: -F names the backing file's format; it needs -B BACKING");
  }
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
});

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

