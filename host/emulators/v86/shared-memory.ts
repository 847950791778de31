/**
 * Rewrites a Wasm module so that its one memory is imported as a *shared* memory. v86 defines
 * its own memory, and the code its JIT compiles imports that memory as unshared; a shared
 * memory is what lets a second thread read the guest's RAM, and so split the checkpoint's
 * compare of all of RAM between two cores (host/memory/compare-helper.ts). A module that
 * declares an unshared memory cannot be given a shared one (the link fails), hence the rewrite:
 * only the memory's declaration changes, never a byte of code.
 *
 * Layouts from the WebAssembly core specification, binary format (section 5.5), with the
 * threads proposal's shared limits (flag 0x03).
 */

import { ErrorCode, TandemError } from "../../errors.ts";

/** Magic and version: the first 8 bytes of every module. */
const PREAMBLE_BYTES = 8;
/** Section ids (spec 5.5.2). */
const SECTION_IMPORT = 2;
const SECTION_MEMORY = 5;
/** Import description tags (spec 5.5.5). */
const IMPORT_FUNC = 0x00;
const IMPORT_TABLE = 0x01;
const IMPORT_MEMORY = 0x02;
const IMPORT_GLOBAL = 0x03;
/** Limits flags: a minimum only; minimum and maximum; both, shared between threads. */
const LIMITS_MIN = 0x00;
const LIMITS_MIN_MAX = 0x01;
const LIMITS_SHARED = 0x03;
/** The most 64 KiB pages a 32-bit memory has; also the maximum tandem declares. */
export const MAX_WASM_PAGES = 65536;

/** Where the memory comes from in the rewritten module, if the original defined it. */
export interface MemoryImportName {
  module: string;
  name: string;
}

interface Section {
  id: number;
  /** Where its id byte is: a section kept as it is is copied from here, size field included. */
  header: number;
  start: number;
  end: number;
}

/** A cursor over module bytes that refuses to read past `end`. */
class Reader {
  at: number;
  constructor(readonly bytes: Uint8Array, at: number, readonly end: number) {
    this.at = at;
  }
  byte(): number {
    if (this.at >= this.end) throw broken(`it ends inside a section at byte ${this.at}`);
    return this.bytes[this.at++];
  }
  u32(): number {
    let result = 0;
    for (let shift = 0; shift < 35; shift += 7) {
      const b = this.byte();
      result += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) {
        if (result > 0xffffffff) throw broken(`a LEB128 u32 at byte ${this.at} is out of range`);
        return result;
      }
    }
    throw broken(`a LEB128 u32 at byte ${this.at} is longer than 5 bytes`);
  }
  skip(count: number): void {
    if (count > this.end - this.at) throw broken(`a length of ${count} at byte ${this.at} runs past its section`);
    this.at += count;
  }
  /** Reads limits; returns the minimum (the maximum, if any, is dropped: tandem sets its own). */
  limits(): number {
    const flags = this.byte();
    const min = this.u32();
    if (flags === LIMITS_MIN_MAX || flags === LIMITS_SHARED) this.u32();
    else if (flags !== LIMITS_MIN) throw broken(`unknown limits flags 0x${flags.toString(16)}`);
    return min;
  }
}

function broken(what: string): TandemError {
  return new TandemError(ErrorCode.EmulatorChanged, `cannot rewrite the emulator's Wasm module to share its memory: ${what}`);
}

function leb(value: number): number[] {
  const out: number[] = [];
  do {
    let b = value & 0x7f;
    value = Math.floor(value / 128);
    if (value !== 0) b |= 0x80;
    out.push(b);
  } while (value !== 0);
  return out;
}

function sharedLimits(min: number): number[] {
  if (min > MAX_WASM_PAGES) throw broken(`its memory starts at ${min} pages, more than a 32-bit memory has`);
  return [LIMITS_SHARED, ...leb(min), ...leb(MAX_WASM_PAGES)];
}

function name(text: string): number[] {
  const bytes = new TextEncoder().encode(text);
  return [...leb(bytes.length), ...bytes];
}

function sections(bytes: Uint8Array): Section[] {
  if (bytes.length < PREAMBLE_BYTES || bytes[0] !== 0x00 || bytes[1] !== 0x61 || bytes[2] !== 0x73 || bytes[3] !== 0x6d) {
    throw broken("it does not start with the Wasm magic");
  }
  const found: Section[] = [];
  const reader = new Reader(bytes, PREAMBLE_BYTES, bytes.length);
  while (reader.at < bytes.length) {
    const header = reader.at;
    const id = reader.byte();
    const size = reader.u32();
    const start = reader.at;
    reader.skip(size);
    found.push({ id, header, start, end: reader.at });
  }
  return found;
}

/** A rewritten module, and the least memory (64 KiB pages) it must be given. */
export interface SharedMemoryModule {
  bytes: Uint8Array<ArrayBuffer>;
  minPages: number;
}

/**
 * Returns a copy of `bytes` whose one memory is imported as shared, with a maximum of
 * {@link MAX_WASM_PAGES}: a defined memory becomes an import named `defined` (its export, if
 * any, still names it); an imported one keeps its name. A module with no memory or with more
 * than one, without an import section, or that does not parse, is refused with
 * E_EMULATOR_CHANGED.
 */
export function shareModuleMemory(bytes: Uint8Array, defined: MemoryImportName = { module: "env", name: "memory" }): SharedMemoryModule {
  const all = sections(bytes);
  const memorySection = all.filter((s) => s.id === SECTION_MEMORY);
  let definedMin: number | undefined;
  if (memorySection.length > 0) {
    const reader = new Reader(bytes, memorySection[0].start, memorySection[0].end);
    const count = reader.u32();
    if (memorySection.length > 1 || count > 1) throw broken("it defines more than one memory");
    if (count === 1) definedMin = reader.limits();
  }
  const parts: Uint8Array[] = [bytes.subarray(0, PREAMBLE_BYTES)];
  let memories = definedMin === undefined ? 0 : 1;
  let minPages = definedMin ?? 0;
  const rewriteImports = (section: Section): Uint8Array => {
    const entries: number[] = [];
    const reader = new Reader(bytes, section.start, section.end);
    let count = reader.u32();
    for (let i = 0; i < count; i++) {
      const entryStart = reader.at;
      reader.skip(reader.u32());
      reader.skip(reader.u32());
      const descriptionAt = reader.at;
      const tag = reader.byte();
      if (tag === IMPORT_MEMORY) {
        memories++;
        minPages = reader.limits();
        entries.push(...bytes.subarray(entryStart, descriptionAt), IMPORT_MEMORY, ...sharedLimits(minPages));
        continue;
      }
      if (tag === IMPORT_FUNC) reader.u32();
      else if (tag === IMPORT_TABLE) {
        reader.byte();
        reader.limits();
      } else if (tag === IMPORT_GLOBAL) reader.skip(2);
      else throw broken(`an import of unknown kind 0x${tag.toString(16)}`);
      entries.push(...bytes.subarray(entryStart, reader.at));
    }
    if (reader.at !== section.end) throw broken("its import section has bytes after its last entry");
    if (definedMin !== undefined) {
      count++;
      entries.push(...name(defined.module), ...name(defined.name), IMPORT_MEMORY, ...sharedLimits(definedMin));
    }
    const body = [...leb(count), ...entries];
    return Uint8Array.from([SECTION_IMPORT, ...leb(body.length), ...body]);
  };
  let imported = false;
  for (const section of all) {
    if (section.id === SECTION_MEMORY) continue;
    if (section.id === SECTION_IMPORT) {
      parts.push(rewriteImports(section));
      imported = true;
      continue;
    }
    parts.push(bytes.subarray(section.header, section.end));
  }
  // Both of v86's kinds of module import something; one that does not is not what this was written for.
  if (!imported) throw broken("it has no import section");
  if (memories !== 1) throw broken(memories === 0 ? "it has no memory" : "it has more than one memory");
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return { bytes: out, minPages };
}
