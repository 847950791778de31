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

import { PREAMBLE_BYTES, Reader, SectionId, concat, leb, name, refusal, section, sections, type Section } from "./wasm-binary.ts";

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

const broken = refusal("to share its memory");

/** Reads limits; returns the minimum (the maximum, if any, is dropped: tandem sets its own). */
function limits(reader: Reader): number {
  const flags = reader.byte();
  const min = reader.u32();
  if (flags === LIMITS_MIN_MAX || flags === LIMITS_SHARED) reader.u32();
  else if (flags !== LIMITS_MIN) throw broken(`unknown limits flags 0x${flags.toString(16)}`);
  return min;
}

function importedLimits(min: number, shared: boolean): number[] {
  if (min > MAX_WASM_PAGES) throw broken(`its memory starts at ${min} pages, more than a 32-bit memory has`);
  return [shared ? LIMITS_SHARED : LIMITS_MIN_MAX, ...leb(min), ...leb(MAX_WASM_PAGES)];
}

/** A rewritten module, and the least memory (64 KiB pages) it must be given. */
export interface SharedMemoryModule {
  bytes: Uint8Array<ArrayBuffer>;
  minPages: number;
}

/**
 * Returns a copy of `bytes` whose one memory is imported as shared (or, with `shared` false, as
 * unshared: for store marks without a second thread), with a maximum of {@link MAX_WASM_PAGES}: a defined memory becomes an import named `defined` (its export, if
 * any, still names it); an imported one keeps its name. A module with no memory or with more
 * than one, without an import section, or that does not parse, is refused with
 * E_EMULATOR_CHANGED.
 */
export function shareModuleMemory(bytes: Uint8Array, defined: MemoryImportName = { module: "env", name: "memory" }, shared = true): SharedMemoryModule {
  const all = sections(bytes, broken);
  const memorySection = all.filter((s) => s.id === SectionId.Memory);
  let definedMin: number | undefined;
  if (memorySection.length > 0) {
    const reader = new Reader(bytes, memorySection[0].start, memorySection[0].end, broken);
    const count = reader.u32();
    if (memorySection.length > 1 || count > 1) throw broken("it defines more than one memory");
    if (count === 1) definedMin = limits(reader);
  }
  const parts: Uint8Array[] = [bytes.subarray(0, PREAMBLE_BYTES)];
  let memories = definedMin === undefined ? 0 : 1;
  let minPages = definedMin ?? 0;
  const rewriteImports = (imports: Section): Uint8Array => {
    const entries: number[] = [];
    const reader = new Reader(bytes, imports.start, imports.end, broken);
    let count = reader.u32();
    for (let i = 0; i < count; i++) {
      const entryStart = reader.at;
      reader.skip(reader.u32());
      reader.skip(reader.u32());
      const descriptionAt = reader.at;
      const tag = reader.byte();
      if (tag === IMPORT_MEMORY) {
        memories++;
        minPages = limits(reader);
        entries.push(...bytes.subarray(entryStart, descriptionAt), IMPORT_MEMORY, ...importedLimits(minPages, shared));
        continue;
      }
      if (tag === IMPORT_FUNC) reader.u32();
      else if (tag === IMPORT_TABLE) {
        reader.byte();
        limits(reader);
      } else if (tag === IMPORT_GLOBAL) reader.skip(2);
      else throw broken(`an import of unknown kind 0x${tag.toString(16)}`);
      entries.push(...bytes.subarray(entryStart, reader.at));
    }
    if (reader.at !== imports.end) throw broken("its import section has bytes after its last entry");
    if (definedMin !== undefined) {
      count++;
      entries.push(...name(defined.module), ...name(defined.name), IMPORT_MEMORY, ...importedLimits(definedMin, shared));
    }
    return section(SectionId.Import, [...leb(count), ...entries]);
  };
  let imported = false;
  for (const each of all) {
    if (each.id === SectionId.Memory) continue;
    if (each.id === SectionId.Import) {
      parts.push(rewriteImports(each));
      imported = true;
      continue;
    }
    parts.push(bytes.subarray(each.header, each.end));
  }
  // Both of v86's kinds of module import something; one that does not is not what this was written for.
  if (!imported) throw broken("it has no import section");
  if (memories !== 1) throw broken(memories === 0 ? "it has no memory" : "it has more than one memory");
  return { bytes: concat(parts), minPages };
}
