/**
 * Write tracking for v86: the guest's writes to RAM are marked in a mark map (one byte per
 * 4 KiB page of v86's 32-bit memory) that a {@link MarkMapDirtyLog} reads at each checkpoint,
 * so a checkpoint's pause follows the pages the guest wrote, not the size of its RAM.
 *
 * Every write to RAM is made by one of:
 * - v86's own Wasm module (its interpreter, its page walker setting accessed and dirty bits,
 *   `zero_memory`, every `write8/16/32` JavaScript calls): rewritten to mark (store-marks.ts);
 * - the modules its JIT compiles: each rewritten the same way before v86 links it;
 * - v86's JavaScript: in 0.5.462 the only writes into RAM after start-up are `cpu.write_blob`
 *   (IDE PIO and DMA, the floppy's DMA, virtio, `emulator.write_memory`, the BIOS reloaded at a
 *   reset) and the write handler of the BIOS's alias at 0xFFF00000, which v86's Wasm reaches
 *   through its `mmap_write*` imports. Both are wrapped here. (`load_kernel` and the multiboot
 *   loader write RAM only while the emulator starts, before any log is armed; `unpack_memory`
 *   only inside restore_state, which tandem's restoreDevices replaces by a no-op.)
 * Read from copy/v86 (src/cpu.js, src/ide.js, src/dma.js, src/virtio.js, src/kernel.js) and
 * from the 0.5.462 build, whose only `mem8` writes are these.
 *
 * The map sits in the memory tandem hands v86 (see instantiateV86), between the minimum its
 * module declares and the memory's initial size: v86's Rust allocator (dlmalloc, on wasm32)
 * takes memory only from what `memory.grow` returns past the current size, and the module's
 * stack and statics lie below its declared minimum, so nothing of v86 ever lies in the map.
 * {@link checkMarkMapLayout} checks that at load; anything wrong falls back to the detecting
 * log, with the reason.
 */

import { readFileSync } from "node:fs";
import { MarkMapDirtyLog } from "../../memory/mark-map-dirty-log.ts";
import { PAGE_SHIFT, PAGE_SIZE } from "../../memory/guest-memory.ts";
import { MARK_MAP_BYTES } from "./store-marks.ts";
import { V86_VERSION, type V86Core, type V86Ram } from "./v86-internals.ts";

/** The writer a mark names: the byte written for a page says which wrote it last. */
export const MarkedBy = {
  /** An instruction of v86's own module. */
  Core: 1,
  /** An instruction of a module v86's JIT compiled. */
  Jit: 2,
  /** v86's JavaScript, through cpu.write_blob (disk DMA and PIO, virtio, write_memory). */
  WriteBlob: 3,
  /** The BIOS alias at 0xFFF00000 (v86's mmap handler writes the BIOS in RAM). */
  BiosAlias: 4,
} as const;

const WRITER_NAMES: Record<number, string> = {
  [MarkedBy.Core]: "v86's core (its Wasm module)",
  [MarkedBy.Jit]: "code v86's JIT compiled",
  [MarkedBy.WriteBlob]: "v86's JavaScript (cpu.write_blob: disk or virtio DMA)",
  [MarkedBy.BiosAlias]: "the BIOS alias at 0xFFF00000",
};

/** Names a writer by its mark. */
export function writerName(mark: number): string {
  return WRITER_NAMES[mark] ?? `an unknown writer (mark ${mark})`;
}

/** 64 KiB pages of the mark map. */
export const MARK_MAP_WASM_PAGES = MARK_MAP_BYTES / 65536;
/** Where v86's BIOS alias starts; writes there land in RAM at `address & BIOS_ALIAS_MASK`. */
const BIOS_ALIAS = 0xfff00000;
const BIOS_ALIAS_MASK = 0xfffff;
/** Bytes each `mmap_write*` import writes, by name (cpu.js builds these imports). */
const MMAP_WRITES: Record<string, number> = { mmap_write8: 1, mmap_write16: 2, mmap_write32: 4, mmap_write64: 8, mmap_write128: 16 };

/** Why tracking cannot be had with the installed v86, or undefined when it can. */
export function trackingUnavailable(): string | undefined {
  try {
    const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.resolve("v86")), "utf8")) as { version?: unknown };
    const version = String(pkg.version);
    if (version !== V86_VERSION && !version.startsWith(`${V86_VERSION}+`)) {
      return `v86 ${version} is installed; its writers were read for ${V86_VERSION} only`;
    }
  } catch (error) {
    return `v86's package.json could not be read (${String(error)})`;
  }
  return undefined;
}

/** The marks of one v86 instance: the map in its memory, and where RAM is once known. */
export class V86Marks {
  readonly memory: WebAssembly.Memory;
  /** Byte address of the map in the memory. */
  readonly map: number;
  #ramOffset = -1;
  #ramSize = 0;
  #view: Uint8Array;

  constructor(memory: WebAssembly.Memory, map: number) {
    this.memory = memory;
    this.map = map;
    this.#view = new Uint8Array(memory.buffer, map, MARK_MAP_BYTES);
  }

  /** Marks guest-physical `[addr, addr + len)` as written by `by`; addresses outside RAM are ignored. */
  mark(addr: number, len: number, by: number): void {
    if (this.#ramOffset < 0 || len <= 0) return;
    const from = Math.max(0, addr);
    const to = Math.min(this.#ramSize, addr + len);
    if (from >= to) return;
    if (this.#view.buffer !== this.memory.buffer) this.#view = new Uint8Array(this.memory.buffer, this.map, MARK_MAP_BYTES);
    const first = (this.#ramOffset + from) >>> PAGE_SHIFT;
    const last = (this.#ramOffset + to - 1) >>> PAGE_SHIFT;
    this.#view.fill(by, first, last + 1);
  }

  /** Wraps v86's `mmap_write*` imports so that writes to the BIOS alias mark the RAM they land in. */
  wrapImports(env: Record<string, unknown>): Record<string, unknown> {
    const wrapped: Record<string, unknown> = { ...env };
    for (const [name, width] of Object.entries(MMAP_WRITES)) {
      const write = env[name];
      if (typeof write !== "function") continue;
      wrapped[name] = (addr: number, ...values: number[]) => {
        const result = (write as (...args: number[]) => unknown)(addr, ...values);
        const start = addr >>> 0;
        if (start >= BIOS_ALIAS) {
          for (let i = 0; i < width; i++) this.mark((start + i) & BIOS_ALIAS_MASK, 1, MarkedBy.BiosAlias);
        }
        return result;
      };
    }
    return wrapped;
  }

  /**
   * Starts marking the JavaScript writers of `core` and returns a log over the RAM's marks; or
   * the reason it cannot (the layout this relies on is not what it found).
   */
  attach(core: V86Core, ram: V86Ram): MarkMapDirtyLog | string {
    const problem = checkMarkMapLayout(ram, this.map);
    if (problem) return problem;
    this.#ramOffset = ram.offset;
    this.#ramSize = ram.size;
    const cpu = core.cpu;
    const writeBlob = cpu.write_blob;
    cpu.write_blob = (blob: ArrayLike<number>, offset: number) => {
      writeBlob.call(cpu, blob, offset);
      this.mark(offset, blob.length, MarkedBy.WriteBlob);
    };
    return new MarkMapDirtyLog({ memory: this.memory, offset: this.map + (ram.offset >>> PAGE_SHIFT), pageCount: ram.size / PAGE_SIZE });
  }
}

/** Why the mark map at `map` cannot serve the RAM, or undefined when it can. */
export function checkMarkMapLayout(ram: V86Ram, map: number): string | undefined {
  if (ram.offset % PAGE_SIZE !== 0) return `v86's RAM starts at ${ram.offset}, not on a page boundary`;
  if (ram.offset < map + MARK_MAP_BYTES) return `v86's RAM (at ${ram.offset}) lies below the end of the mark map (${map + MARK_MAP_BYTES})`;
  return undefined;
}
