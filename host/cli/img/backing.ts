/** The backing file a new image will name (`create -b`, `convert -B`): found and measured before the image is made. */

import { ErrorCode, TandemError } from "../../errors.ts";
import { openDisk, resolveBackingPath } from "../../disk/registry.ts";
import type { DiskOpenOptions } from "../../disk/format.ts";

/** What the new image needs to know of its backing file. */
export interface BackingFacts {
  /** The backing disk's virtual size in bytes. */
  size: number;
  /** Its format: the one given, or the probed one. */
  format: string;
}

/**
 * Opens the backing file `name` as the image at `imagePath` will find it (a relative name is
 * relative to that image's directory, as QEMU resolves it), read-only and without its own
 * backing chain, and returns its size and format. `format` forces the format; else it is probed.
 */
export function inspectBacking(imagePath: string, name: string, format: string | undefined): BackingFacts {
  const path = resolveBackingPath(imagePath, name);
  const options: DiskOpenOptions = { readOnly: true, noBacking: true };
  if (format !== undefined) options.format = format;
  let disk;
  try {
    disk = openDisk(path, options);
  } catch (error) {
    const why = error instanceof Error ? error.message : String(error);
    const where = path === name ? "" : ` (found relative to the new image's directory as ${path})`;
    throw new TandemError(ErrorCode.DiskBacking, `backing file ${name}${where} cannot be opened: ${why}`);
  }
  try {
    return { size: disk.size, format: disk.format };
  } finally {
    disk.close();
  }
}
