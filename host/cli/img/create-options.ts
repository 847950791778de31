/** The `-o key=value,...` image options of `tandem img create` and `convert`, in qemu-img's spelling. */

import { ErrorCode, TandemError } from "../../errors.ts";
import type { DiskCreateOptions } from "../../disk/format.ts";
import { list } from "../options.ts";
import { parseSize } from "./size.ts";

/** The -o option of create and convert; read by {@link parseImageOptions}. */
export const IMAGE_OPTIONS = list("OPTIONS", "image options: cluster_size=N,lazy_refcounts=on|off (may repeat)", { short: "o" });

/** The options `-o` sets. */
export type ImageOptions = Pick<DiskCreateOptions, "clusterSize" | "lazyRefcounts">;

/** Option names `-o` knows. */
const KNOWN = ["cluster_size", "lazy_refcounts"];

/** Parses every `-o` value (each a comma-separated list of key=value) into create options. */
export function parseImageOptions(lists: readonly string[]): ImageOptions {
  const options: ImageOptions = {};
  for (const item of lists.flatMap((list) => list.split(",")).filter((item) => item !== "")) {
    const equals = item.indexOf("=");
    const key = equals < 0 ? item : item.slice(0, equals);
    const value = equals < 0 ? "" : item.slice(equals + 1);
    if (key === "cluster_size") options.clusterSize = parseSize(value, "-o cluster_size");
    else if (key === "lazy_refcounts") options.lazyRefcounts = onOff(value);
    else throw new TandemError(ErrorCode.BadArgument, `-o ${item}: unknown image option '${key}'; known: ${KNOWN.join(", ")}`);
  }
  return options;
}

function onOff(value: string): boolean {
  if (value === "on") return true;
  if (value === "off") return false;
  throw new TandemError(ErrorCode.BadArgument, `-o lazy_refcounts=${value}: give on or off`);
}

/** `options` as qemu-img's create line prints them ("cluster_size=65536 lazy_refcounts=on"). */
export function describeImageOptions(options: ImageOptions): string {
  const parts: string[] = [];
  if (options.clusterSize !== undefined) parts.push(`cluster_size=${options.clusterSize}`);
  if (options.lazyRefcounts !== undefined) parts.push(`lazy_refcounts=${options.lazyRefcounts ? "on" : "off"}`);
  return parts.join(" ");
}
