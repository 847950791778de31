/**
 * A device's own keys (features, ring references, sizes): what the device callbacks hand to
 * xenbus to publish, and how they read the other side's.
 */

import { ErrorCode, TandemError } from "../../errors.ts";
import { readOptional, type XenbusStore } from "./xenbus-store.ts";

/** Keys to write under a device directory: names relative to it, values as strings or integers (written in decimal). */
export type XenbusKeys = Readonly<Record<string, string | number>>;

/** Reads keys of one side's directory. Each read goes to the store: read a key once per connect and keep the value. */
export interface XenbusReader {
  /** The directory. */
  readonly path: string;
  /** The key's value, or undefined if it does not exist. */
  read(key: string): string | undefined;
}

const KEY = /^[A-Za-z0-9_-]+(\/[A-Za-z0-9_-]+)*$/;
/** Keys xenbus itself manages. */
const RESERVED = new Set(["state", "online"]);

/** A reader of `dir` through `store`. */
export function readerFor(store: XenbusStore, dir: string): XenbusReader {
  return { path: dir, read: (key) => readOptional(store, `${dir}/${checkKey(key)}`) };
}

/** Writes `keys` under `dir`, in transaction `tx` (0 for none). */
export function writeKeys(store: XenbusStore, dir: string, keys: XenbusKeys, tx: number): void {
  for (const [key, value] of Object.entries(keys)) {
    if (RESERVED.has(key)) throw new TandemError(ErrorCode.BadArgument, `key '${key}' under ${dir} is written by xenbus itself, not by a device`);
    if (typeof value === "number" && !(Number.isSafeInteger(value) && value >= 0)) {
      throw new TandemError(ErrorCode.BadArgument, `key '${key}' under ${dir}: ${value} is not a non-negative integer`);
    }
    store.write(`${dir}/${checkKey(key)}`, String(value), tx);
  }
}

function checkKey(key: string): string {
  if (!KEY.test(key)) throw new TandemError(ErrorCode.BadArgument, `'${key}' is not a key: letters, digits, '-', '_', components joined by '/'`);
  return key;
}
