/**
 * The format registry: opens an image of any known format, probing it when no format is given,
 * and follows its backing chain; creates and checks images. Formats register themselves here.
 */

import { realpathSync } from "node:fs";
import { dirname, isAbsolute, join } from "node:path";
import { ErrorCode, TandemError } from "../errors.ts";
import { FileBlockFile, type BlockFile } from "./block-file.ts";
import type { Disk } from "./disk.ts";
import { cowFormat } from "./cow/cow-format.ts";
import type { CheckReport, DiskCreateOptions, DiskFormat, DiskOpenOptions } from "./format.ts";
import { qcow2Format } from "./qcow2/qcow2-format.ts";
import { rawFormat } from "./raw-disk.ts";

/** Backing chains deeper than this are refused: a real chain is a handful of layers. */
export const MAX_CHAIN_DEPTH = 64;
/** Bytes of the file's start a format's probe sees. */
const PROBE_BYTES = 4096;

const formats = new Map<string, DiskFormat>([
  [rawFormat.name, rawFormat],
  [cowFormat.name, cowFormat],
  [qcow2Format.name, qcow2Format],
]);

/** Adds a format (replacing one of the same name). */
export function registerFormat(format: DiskFormat): void {
  formats.set(format.name, format);
}

/** The registered format names. */
export function formatNames(): string[] {
  return [...formats.keys()];
}

/** The format called `name`, or E_DISK_UNSUPPORTED naming the known ones. */
export function formatByName(name: string): DiskFormat {
  const format = formats.get(name);
  if (format === undefined) {
    throw new TandemError(ErrorCode.DiskUnsupported, `unknown image format '${name}'; known: ${formatNames().join(", ")}`);
  }
  return format;
}

/** The format whose probe claims `file`, or raw. */
export function probeFormat(file: BlockFile): DiskFormat {
  const head = new Uint8Array(PROBE_BYTES);
  const n = file.read(0, head);
  for (const format of formats.values()) if (format.probe(head.subarray(0, n))) return format;
  return rawFormat;
}

/** Opens the image at `path` and its backing chain. */
export function openDisk(path: string, options: DiskOpenOptions = {}): Disk {
  return openInChain(path, options, []);
}

/** Creates an image at `path` (which must not exist) and returns nothing; open it with {@link openDisk}. */
export function createImage(path: string, format: string, options: DiskCreateOptions): void {
  const chosen = formatByName(format);
  if (!Number.isSafeInteger(options.size) || options.size < 0) {
    throw new TandemError(ErrorCode.BadArgument, `image size must be a whole number of bytes, not ${options.size}`);
  }
  const file = FileBlockFile.open(path, { create: true });
  try {
    chosen.create(file, options);
    file.sync();
  } finally {
    file.close();
  }
}

/** Checks the image at `path` (its format probed unless given); with `repair`, fixes what can be fixed. */
export function checkImage(path: string, options: { format?: string; repair?: boolean } = {}): CheckReport {
  const repair = options.repair === true;
  const file = FileBlockFile.open(path, { readOnly: !repair });
  try {
    const format = options.format !== undefined ? formatByName(options.format) : probeFormat(file);
    if (format.check === undefined) {
      return { format: format.name, errors: 0, leaks: 0, errorsFixed: 0, leaksFixed: 0, messages: [`${format.name} images have no metadata to check`] };
    }
    return format.check(file, { repair });
  } finally {
    file.close();
  }
}

/** Resolves a backing name the way QEMU does: relative to the directory of the image naming it. */
export function resolveBackingPath(imagePath: string, name: string): string {
  if (/^[a-z0-9+]+:/i.test(name) && !isAbsolute(name)) {
    throw new TandemError(ErrorCode.DiskUnsupported, `backing file '${name}' of ${imagePath} is a protocol URL; only files are supported`);
  }
  return isAbsolute(name) ? name : join(dirname(imagePath), name);
}

function openInChain(path: string, options: DiskOpenOptions, chain: string[]): Disk {
  let real: string;
  try {
    real = realpathSync(path);
  } catch {
    if (chain.length === 0) throw new TandemError(ErrorCode.DiskIo, `cannot open ${path}: no such file`);
    throw new TandemError(ErrorCode.DiskBacking, `backing file ${path} of ${chain[chain.length - 1]} does not exist`);
  }
  if (chain.includes(real)) {
    throw new TandemError(ErrorCode.DiskBacking, `backing chain loops: ${[...chain, real].join(" -> ")}`);
  }
  if (chain.length >= MAX_CHAIN_DEPTH) {
    throw new TandemError(ErrorCode.DiskBacking, `backing chain of ${chain[0]} is deeper than ${MAX_CHAIN_DEPTH} images`);
  }
  const readOnly = options.readOnly === true;
  const file = FileBlockFile.open(path, { readOnly });
  try {
    const format = options.format !== undefined ? formatByName(options.format) : probeFormat(file);
    const inner = [...chain, real];
    return format.open(file, {
      ...options,
      readOnly,
      openBacking: (name, backingFormat) => {
        if (options.noBacking) throw new TandemError(ErrorCode.DiskBacking, `${path} was opened without its backing file`);
        const backingOptions: DiskOpenOptions = { readOnly: true };
        if (backingFormat !== undefined) backingOptions.format = backingFormat;
        if (options.l2CacheBytes !== undefined) backingOptions.l2CacheBytes = options.l2CacheBytes;
        return openInChain(resolveBackingPath(path, name), backingOptions, inner);
      },
    });
  } catch (error) {
    file.close();
    throw error;
  }
}
