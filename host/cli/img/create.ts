/**
 * `tandem img create -f FMT [-b BACKING [-F BACKING_FMT]] [-o OPTIONS] FILE [SIZE]`: a new empty
 * image. With a backing file and no SIZE, the image is as large as the backing disk. The backing
 * name is recorded as given; its format, when -F is absent, is the one probed from the file.
 */

import { existsSync, rmSync } from "node:fs";
import { ErrorCode, TandemError } from "../../errors.ts";
import type { DiskCreateOptions } from "../../disk/format.ts";
import { createImage } from "../../disk/registry.ts";
import { defineCommand, text, usageLine } from "../options.ts";
import { formatOption } from "./arguments.ts";
import { inspectBacking } from "./backing.ts";
import { describeImageOptions, IMAGE_OPTIONS, parseImageOptions } from "./create-options.ts";
import { parseSize } from "./size.ts";

/** `tandem img create`; returns the exit code. */
export const imgCreate = defineCommand({
  name: "img create",
  operands: "FILE [SIZE]",
  minOperands: 1,
  maxOperands: 2,
  summary: "A new empty image; SIZE in bytes or with K, M, G, T (512K, 1G); with -b and no SIZE,\nthe backing file's size.",
  options: {
    format: formatOption("f", "the new image's format", { default: "raw" }),
    backing: text("BACKING", "the backing file the image overlays", { short: "b" }),
    "backing-format": formatOption("F", "the backing file's format (probed when absent)"),
    options: IMAGE_OPTIONS,
  },
}, ({ values, operands: [file, sizeText] }, io) => {
  const format = values.format ?? "raw";
  const imageOptions = parseImageOptions(values.options);
  if (values["backing-format"] !== undefined && values.backing === undefined) {
    throw new TandemError(ErrorCode.BadArgument, "img create: -F names the backing file's format; it needs -b BACKING");
  }
  if (sizeText === undefined && values.backing === undefined) {
    throw new TandemError(ErrorCode.BadArgument, `img create: SIZE is missing (needed without -b); usage: ${usageLine(imgCreate.spec)}`);
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
});
