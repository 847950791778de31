/** The cow format for the registry (docs/cow-format.md): probe, open, create and check. */

import type { BlockFile } from "../block-file.ts";
import type { Disk } from "../disk.ts";
import type { CheckReport, DiskCreateOptions, DiskFormat, FormatOpenContext } from "../format.ts";
import { checkCow } from "./cow-check.ts";
import { CowDisk } from "./cow-disk.ts";
import { newCowHeader, parseCowHeader, serializeCowHeader } from "./cow-header.ts";
import { COW_MAGIC } from "./cow-layout.ts";
import { readBlockStates } from "./read-block-states.ts";

function openCow(file: BlockFile, context: FormatOpenContext): Disk {
  const header = parseCowHeader(file);
  const states = readBlockStates(file, header);
  const backing = header.baseName !== null && context.noBacking !== true ? context.openBacking(header.baseName, header.baseFormat ?? undefined) : null;
  return new CowDisk(file, header, states, backing, { readOnly: context.readOnly === true, sync: context.sync === true });
}

function createCow(file: BlockFile, options: DiskCreateOptions): void {
  const header = newCowHeader(options, file.path);
  // The bitmap is written as zeros (every block absent); the data area is left sparse.
  file.write(0, serializeCowHeader(header));
  file.write(header.bitmapOffset, new Uint8Array(header.bitmapLength));
  file.truncate(header.dataOffset);
}

/** tandem's copy-on-write overlay: a header, a 2-bit-per-block bitmap, then blocks mapped one to one. */
export const cowFormat: DiskFormat = {
  name: "cow",
  probe: (head: Uint8Array) => head.length >= COW_MAGIC.length && COW_MAGIC.every((b, i) => head[i] === b),
  open: openCow,
  create: createCow,
  check: (file: BlockFile, options: { repair: boolean }): CheckReport => checkCow(file, options),
};
