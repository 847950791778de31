/**
 * lseek(2) with SEEK_DATA and SEEK_HOLE, where the runtime can call it: Bun (bun:ffi) and Deno
 * (Deno.dlopen, which needs --allow-ffi) on Linux. Node has neither a binding for these whence
 * values nor a foreign-function interface: there {@link holeSeeker} returns null, and callers
 * find zeros by reading instead (host/disk/zero-ranges.ts).
 */

import { platform } from "node:os";
import { runtimeName } from "./runtime.ts";

/** Linux's whence values (include/uapi/linux/fs.h). */
const SEEK_DATA = 3;
const SEEK_HOLE = 4;

/** Finds data and holes in an open file. */
export interface HoleSeeker {
  /** The first offset at or after `offset` that holds data, or -1 if none does (ENXIO). */
  seekData(fd: number, offset: number): number;
  /** The first offset at or after `offset` inside a hole (the end of the file counts as one), or -1 on error. */
  seekHole(fd: number, offset: number): number;
}

type Lseek = (fd: number, offset: number, whence: number) => bigint | number;

let loaded: HoleSeeker | null | undefined;

/** The runtime's hole seeker, or null where there is none (loaded on first use, synchronously). */
export function holeSeeker(): HoleSeeker | null {
  if (loaded === undefined) loaded = load();
  return loaded;
}

function load(): HoleSeeker | null {
  if (platform() !== "linux") return null;
  let lseek: Lseek | null = null;
  try {
    if (runtimeName() === "bun") {
      // Bun's synchronous require, so no module of the chain needs top-level await.
      const require = (import.meta as unknown as { require: (id: string) => unknown }).require;
      const ffi = require("bun:ffi") as {
        dlopen: (lib: string, symbols: Record<string, { args: string[]; returns: string }>) => { symbols: { lseek: Lseek } };
      };
      lseek = ffi.dlopen("libc.so.6", { lseek: { args: ["i32", "i64", "i32"], returns: "i64" } }).symbols.lseek;
    } else if (runtimeName() === "deno") {
      const deno = (globalThis as unknown as { Deno: { dlopen: (lib: string, symbols: Record<string, { parameters: string[]; result: string }>) => { symbols: { lseek: Lseek } } } }).Deno;
      lseek = deno.dlopen("libc.so.6", { lseek: { parameters: ["i32", "i64", "i32"], result: "i64" } }).symbols.lseek;
    }
  } catch {
    // No FFI permission (Deno without --allow-ffi) or no libc.so.6: read instead.
    return null;
  }
  if (lseek === null) return null;
  const call = lseek;
  const seek = (fd: number, offset: number, whence: number): number => {
    const result = Number(call(fd, offset, whence));
    return result < 0 ? -1 : result;
  };
  return { seekData: (fd, offset) => seek(fd, offset, SEEK_DATA), seekHole: (fd, offset) => seek(fd, offset, SEEK_HOLE) };
}
