/**
 * `tandem img map [-f FMT] [--json] FILE`: which ranges of the disk are allocated, and where, in
 * the words of `qemu-img map`. JSON: one object per extent with qemu-img's field names (start,
 * length, depth, present, zero, data, and offset where the bytes lie uncompressed in a file).
 * Human: a table of the extents stored as data; "-" under "Mapped to" where the bytes are not
 * stored as is (compressed), which qemu-img refuses to print at all.
 */

import { mergeExtents, type Disk, type DiskExtent } from "../../disk/disk.ts";
import type { DiskOpenOptions } from "../../disk/format.ts";
import { openDisk } from "../../disk/registry.ts";
import { defineCommand } from "../options.ts";
import { formatOption, JSON_OPTION } from "./arguments.ts";

/** `tandem img map`; returns the exit code. */
export const imgMap = defineCommand({
  name: "img map",
  operands: "FILE",
  minOperands: 1,
  maxOperands: 1,
  summary: "Allocated ranges and where they lie, as qemu-img map prints them.",
  options: {
    format: formatOption("f", "the image's format (probed when absent)"),
    json: JSON_OPTION,
  },
}, ({ values, operands: [file] }, io) => {
  const options: DiskOpenOptions = { readOnly: true };
  if (values.format !== undefined) options.format = values.format;
  const disk = openDisk(file, options);
  try {
    const extents = mergeExtents(disk.map(0, disk.size));
    io.out(values.json ? mapJson(extents) : mapTable(extents, layerNames(disk)));
  } finally {
    disk.close();
  }
  return 0;
});

/** `extents` as `qemu-img map --output=json` prints them: an array, one extent a line. */
export function mapJson(extents: readonly DiskExtent[]): string {
  const lines = extents.map((e) => {
    const fields: Record<string, number | boolean> = { start: e.offset, length: e.length, depth: e.depth, present: e.present, zero: e.zero, data: e.data };
    if (e.fileOffset !== undefined) fields.offset = e.fileOffset;
    return `{ ${Object.entries(fields).map(([key, value]) => `"${key}": ${value}`).join(", ")}}`;
  });
  return `[${lines.join(",\n")}]`;
}

/** The data extents as `qemu-img map`'s table; `files[depth]` names the layer that holds each. */
function mapTable(extents: readonly DiskExtent[], files: readonly string[]): string {
  const column = (text: string) => text.padEnd(16);
  const hex = (n: number) => (n === 0 ? "0" : `0x${n.toString(16)}`);
  const rows = extents
    .filter((e) => e.data && !e.zero)
    .map((e) => column(hex(e.offset)) + column(hex(e.length)) + column(e.fileOffset === undefined ? "-" : hex(e.fileOffset)) + (files[e.depth] ?? ""));
  return [column("Offset") + column("Length") + column("Mapped to") + "File", ...rows].join("\n");
}

/** The file of every layer of `disk`'s chain, top first. */
function layerNames(disk: Disk): string[] {
  const names: string[] = [];
  for (let layer: Disk | null = disk; layer !== null; layer = layer.backing) names.push(layer.info().fileName);
  return names;
}
