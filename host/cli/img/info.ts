/**
 * `tandem img info [-f FMT] [--json] [--backing-chain] FILE`: what an image is, in the words of
 * `qemu-img info`. Without --backing-chain the image is opened without its backing file, so info
 * works on an image whose backing file is missing; with it, every layer, top first.
 */

import { statSync } from "node:fs";
import type { DiskInfo } from "../../disk/disk.ts";
import type { DiskOpenOptions } from "../../disk/format.ts";
import { MAX_CHAIN_DEPTH, openDisk, resolveBackingPath } from "../../disk/registry.ts";
import { defineCommand, flag } from "../options.ts";
import { formatOption, JSON_OPTION } from "./arguments.ts";
import { humanSize } from "./size.ts";

/** `tandem img info`; returns the exit code. */
export const imgInfo = defineCommand({
  name: "img info",
  operands: "FILE",
  minOperands: 1,
  maxOperands: 1,
  summary: "Format, sizes, backing file, as qemu-img info prints them.",
  options: {
    format: formatOption("f", "the image's format (probed when absent)"),
    json: JSON_OPTION,
    "backing-chain": flag("every layer of the backing chain, top first"),
  },
}, ({ values, operands: [file] }, io) => {
  const options: DiskOpenOptions = { readOnly: true, noBacking: !values["backing-chain"] };
  if (values.format !== undefined) options.format = values.format;
  const disk = openDisk(file, options);
  let infos: DiskInfo[];
  try {
    infos = [];
    for (let layer: typeof disk | null = disk; layer !== null && infos.length <= MAX_CHAIN_DEPTH; layer = layer.backing) infos.push(layer.info());
  } finally {
    disk.close();
  }
  if (values.json) io.out(JSON.stringify(values["backing-chain"] ? infos : infos[0], null, 4));
  else io.out(infos.map(describeInfo).join("\n\n"));
  return 0;
});

/** `info` as `qemu-img info` lays it out. */
export function describeInfo(info: DiskInfo): string {
  const lines = [
    `image: ${info.fileName}`,
    `file format: ${info.format}`,
    `virtual size: ${humanSize(info.virtualSize)} (${info.virtualSize} bytes)`,
    `disk size: ${humanSize(allocatedBytes(info))}`,
  ];
  if (info.clusterSize !== undefined) lines.push(`cluster_size: ${info.clusterSize}`);
  if (info.dirty === true) lines.push("cleanly shut down: no");
  if (info.backingFile !== undefined) {
    const actual = actualPath(info.fileName, info.backingFile);
    lines.push(`backing file: ${info.backingFile}${actual === info.backingFile ? "" : ` (actual path: ${actual})`}`);
  }
  if (info.backingFormat !== undefined) lines.push(`backing file format: ${info.backingFormat}`);
  const specific = Object.entries(info.formatSpecific ?? {});
  if (specific.length > 0) lines.push("Format specific information:", ...specific.map(([key, value]) => `    ${key}: ${value}`));
  return lines.join("\n");
}

/** Where `name` is found from `imagePath`; `name` itself where it cannot be resolved (a protocol URL). */
function actualPath(imagePath: string, name: string): string {
  try {
    return resolveBackingPath(imagePath, name);
  } catch {
    return name;
  }
}

/** The bytes the image file occupies on the host (its allocated blocks), or its length where the runtime does not say. */
function allocatedBytes(info: DiskInfo): number {
  const blocks = statSync(info.fileName).blocks;
  return typeof blocks === "number" && Number.isFinite(blocks) ? blocks * 512 : info.fileSize;
}
