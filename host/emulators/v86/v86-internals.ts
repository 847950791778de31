/**
 * Every use tandem makes of v86 beyond its public API, in one place. v86 has no API for guest
 * RAM in place or for a state without RAM, so the adapter reaches into the instance; these
 * names are stable in v86's release build (Closure keeps them) but not promised, so the exact
 * version is pinned in package.json and {@link checkV86Internals} fails loudly, naming what
 * changed, when an upgrade moves any of them. Read from copy/v86 at 0.5.462 (src/main.js,
 * src/cpu.js, src/state.js) and its release build.
 *
 * Used internals (copy/v86, src/main.js and src/cpu.js):
 * - `emulator.v86`: the machine; `.stop()` / `.run()` are synchronous there (the starter's
 *   versions are async and wait for an event), `.save_state()` / `.restore_state()` too.
 * - `emulator.v86.cpu.wasm_memory`: v86's own exported WebAssembly.Memory; the guest RAM is
 *   `cpu.mem8` (a view whose `byteOffset` is where RAM starts), `cpu.memory_size[0]` bytes.
 * - `cpu.pack_memory()` / `cpu.unpack_memory()`: how save_state and restore_state carry RAM;
 *   replaced per call to leave RAM out (tandem's checkpoints carry it).
 * - `cpu.codegen_finalize(index, start, flags, ptr, length)`: how v86 links the module its JIT
 *   compiled at `ptr` in its memory; it reads the module through `cpu.wasm_memory.buffer` and
 *   links it against `cpu.jit_imports` (whose `m` is the memory). With a shared memory, each such
 *   module is rewritten to import it as shared first, and with write tracking to mark its stores
 *   ({@link rewriteJitCode}).
 * - `cpu.write_blob(blob, offset)`: how v86's JavaScript devices write RAM (disk and virtio DMA);
 *   wrapped by write tracking (v86-tracking.ts).
 * - `emulator.bus`: the starter's end of v86's message bus (src/browser/starter.js); a frame sent
 *   on it as `net0-receive` reaches the first network card (src/ne2k.js), which announces the
 *   frames it transmits as `net0-send` ({@link v86NetworkBus}).
 */

import { ErrorCode, TandemError } from "../../errors.ts";
import { fromV86Layout, toV86Layout } from "./v86-device-state.ts";

/** The v86 version the internals below were read from; package.json pins it exactly. */
export const V86_VERSION = "0.5.462";

/** The part of a v86 CPU tandem touches. */
export interface V86Cpu {
  wasm_memory: WebAssembly.Memory;
  mem8: Uint8Array;
  memory_size: Int32Array | Uint32Array;
  pack_memory(): { bitmap: { get_buffer(): ArrayBuffer }; packed_memory: Uint8Array };
  unpack_memory(bitmap: unknown, packed: Uint8Array): void;
  codegen_finalize(index: number, start: number, stateFlags: number, ptr: number, length: number): void;
  write_blob(blob: ArrayLike<number>, offset: number): void;
  jit_imports: { m?: WebAssembly.Memory };
  /** The VGA device; its `pixel_buffer` is a cache of the screen that v86 redraws after a restore. */
  devices?: { vga?: { pixel_buffer?: Uint8Array } };
}

/** The part of v86's inner machine (`emulator.v86`) tandem touches. */
export interface V86Core {
  cpu: V86Cpu;
  running: boolean;
  stop(): void;
  run(): void;
  save_state(): ArrayBuffer;
  restore_state(state: ArrayBuffer): void;
}

/** Where a v86 guest's RAM lives. */
export interface V86Ram {
  memory: WebAssembly.Memory;
  offset: number;
  size: number;
}

/** The starter's end of v86's bus, as the network bridge uses it. */
export interface V86NetworkBus {
  add_listener(event: string, listener: (data: Uint8Array) => void): void;
  bus: { send(event: string, data: Uint8Array): void };
}

/** The emulator as a network bus, after checking that its bus is there. */
export function v86NetworkBus(emulator: object): V86NetworkBus {
  const candidate = emulator as Partial<V86NetworkBus>;
  if (typeof candidate.add_listener !== "function" || typeof candidate.bus?.send !== "function") {
    throw new TandemError(ErrorCode.EmulatorChanged, `this v86 build has no emulator.bus.send(), which tandem's network bridge uses (written for v86 ${V86_VERSION})`);
  }
  return candidate as V86NetworkBus;
}

/** The inner machine of a V86 instance, after checking every internal tandem uses. */
export function checkV86Internals(emulator: object): V86Core {
  const problems: string[] = [];
  const core = (emulator as { v86?: Partial<V86Core> }).v86;
  if (!core || typeof core !== "object") {
    problems.push("emulator.v86 is missing");
  } else {
    for (const name of ["stop", "run", "save_state", "restore_state"] as const) {
      if (typeof core[name] !== "function") problems.push(`emulator.v86.${name}() is missing`);
    }
    if (typeof core.running !== "boolean") problems.push("emulator.v86.running is not a boolean");
    const cpu = core.cpu as Partial<V86Cpu> | undefined;
    if (!cpu || typeof cpu !== "object") {
      problems.push("emulator.v86.cpu is missing");
    } else {
      if (!(cpu.wasm_memory instanceof WebAssembly.Memory)) problems.push("cpu.wasm_memory is not a WebAssembly.Memory");
      if (typeof cpu.pack_memory !== "function") problems.push("cpu.pack_memory() is missing");
      if (typeof cpu.unpack_memory !== "function") problems.push("cpu.unpack_memory() is missing");
      if (typeof cpu.codegen_finalize !== "function") problems.push("cpu.codegen_finalize() is missing");
      if (typeof cpu.write_blob !== "function") problems.push("cpu.write_blob() is missing");
      if (!cpu.jit_imports || cpu.jit_imports.m !== cpu.wasm_memory) problems.push("cpu.jit_imports.m is not v86's memory");
      const size = cpu.memory_size?.[0];
      if (typeof size !== "number" || size <= 0) problems.push("cpu.memory_size[0] is not the RAM size");
      const mem8 = cpu.mem8;
      if (!mem8 || typeof mem8.byteOffset !== "number" || mem8.length !== size) problems.push("cpu.mem8 is not a view of the RAM");
      else if (cpu.wasm_memory instanceof WebAssembly.Memory && mem8.byteOffset + mem8.length > cpu.wasm_memory.buffer.byteLength) {
        problems.push("cpu.mem8 does not lie inside cpu.wasm_memory");
      }
    }
  }
  if (problems.length > 0) {
    throw new TandemError(ErrorCode.EmulatorChanged,
      `this v86 build does not have the internals tandem's adapter uses (written for v86 ${V86_VERSION}): ${problems.join("; ")}`);
  }
  return core as V86Core;
}

/** Where the guest's RAM is in v86's memory: scanned there by tandem's kernels, never copied. */
export function v86Ram(core: V86Core): V86Ram {
  const cpu = core.cpu;
  return { memory: cpu.wasm_memory, offset: cpu.mem8.byteOffset, size: cpu.memory_size[0] };
}

/** v86's save_state with the RAM left out: registers and devices only. The guest must be stopped. */
export function saveDeviceState(core: V86Core): Uint8Array {
  const cpu = core.cpu;
  const ownPack = cpu.pack_memory;
  // A state whose RAM bitmap is empty: restore_state would read no page from it.
  cpu.pack_memory = () => ({ bitmap: { get_buffer: () => new ArrayBuffer(0) }, packed_memory: new Uint8Array(0) });
  // The VGA's pixel buffer (512 KiB, a third of the state) is left out: it is the screen as
  // last drawn from the VGA's memory, which the state carries. v86's set_state copies it only if
  // present (an empty one copies nothing), and then calls complete_redraw, which draws it anew.
  const vga = cpu.devices?.vga;
  const pixels = vga?.pixel_buffer;
  if (vga && pixels) vga.pixel_buffer = NO_PIXELS;
  try {
    return fromV86Layout(new Uint8Array(core.save_state()));
  } finally {
    cpu.pack_memory = ownPack;
    if (vga && pixels) vga.pixel_buffer = pixels;
  }
}

const NO_PIXELS = new Uint8Array(0);

/** Restores a state from {@link saveDeviceState}, leaving the RAM as it is. The guest must be stopped. */
export function restoreDeviceState(core: V86Core, state: Uint8Array): void {
  const cpu = core.cpu;
  const ownUnpack = cpu.unpack_memory;
  cpu.unpack_memory = () => {}; // its default zeroes RAM first
  try {
    // restore_state also drops compiled code and the TLB, so RAM written by tandem is seen fresh.
    // v86 reads the whole ArrayBuffer it is given, in its own layout.
    core.restore_state(toV86Layout(state));
  } finally {
    cpu.unpack_memory = ownUnpack;
  }
}

/**
 * Has each module v86's JIT compiles rewritten before v86 links it: to import a shared memory
 * (each imports the memory as unshared, which a shared memory cannot satisfy; see
 * shared-memory.ts), and for write tracking to mark its stores (store-marks.ts). v86's own
 * linking code then runs unchanged: during the call it reads the rewritten module from a
 * stand-in for its memory, and links it against the real one. Call once, before the guest
 * first runs.
 */
export function rewriteJitCode(core: V86Core, rewrite: (module: Uint8Array) => Uint8Array<ArrayBuffer>): void {
  const cpu = core.cpu;
  const link = cpu.codegen_finalize;
  cpu.codegen_finalize = function (index, start, stateFlags, ptr, length) {
    const memory = cpu.wasm_memory;
    const module = rewrite(new Uint8Array(memory.buffer, ptr >>> 0, length >>> 0));
    cpu.wasm_memory = { buffer: module.buffer } as unknown as WebAssembly.Memory;
    try {
      link.call(cpu, index, start, stateFlags, 0, module.length);
    } finally {
      cpu.wasm_memory = memory;
    }
  };
}
