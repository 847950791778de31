/**
 * A v86 instance as a tandem {@link Machine}: the adapter that lets the replication engine
 * checkpoint, replicate and migrate a real x86 PC emulator (docs/embedding.md walks through it).
 *
 * - RAM is v86's own WebAssembly.Memory, scanned in place by tandem's kernels (which import that
 *   memory). By default v86's modules are rewritten to mark every page they write
 *   (v86-tracking.ts), so `dirtyLogs` holds a log the emulator marks and a checkpoint's pause
 *   follows the pages written. Without tracking the engine finds changed pages with a detecting
 *   dirty log, whose compare of all of RAM runs on two cores when the memory is shared
 *   (shared-memory.ts, the default).
 * - Device state is v86's save_state without the RAM (v86-internals.ts).
 * - Serial output is cut into lines and handed to the engine, which holds it until the
 *   checkpoint of the epoch that printed it commits.
 * - Drives (hda, hdb, fda, cdrom) are tandem disks (v86-disk.ts); guest writes to the writable
 *   ones travel in checkpoints. A read-only drive never changes, so it is not among `disks`:
 *   each side opens its own copy of the image.
 *
 * A standby must be built with the same options as its primary: v86 restores state only into an
 * identically configured instance.
 */

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { V86, type V86Options } from "v86";
import { ErrorCode, TandemError } from "../../errors.ts";
import { closeCompareHelper } from "../../memory/compare-helper.ts";
import { DetectingDirtyLog } from "../../memory/detecting-dirty-log.ts";
import type { DirtyLog } from "../../memory/dirty-log.ts";
import { GuestMemory } from "../../memory/guest-memory.ts";
import type { MarkMapDirtyLog } from "../../memory/mark-map-dirty-log.ts";
import { VerifyingDirtyLog } from "../../memory/verifying-dirty-log.ts";
import type { GuestIdentity } from "../../machine/guest-identity.ts";
import type { Machine, MachineDisk, MachineOutput } from "../../machine/machine.ts";
import { MemoryDisk } from "../../machine/memory-disk.ts";
import { debianSeaBios, type Firmware } from "./firmware.ts";
import { MAX_WASM_PAGES, shareModuleMemory } from "./shared-memory.ts";
import { markModuleStores } from "./store-marks.ts";
import { V86Disk } from "./v86-disk.ts";
import { v86Identity } from "./v86-identity.ts";
import { V86Nic } from "./v86-nic.ts";
import { checkV86Internals, restoreDeviceState, rewriteJitCode, saveDeviceState, v86NetworkBus, v86Ram, type V86Core } from "./v86-internals.ts";
import { MARK_MAP_WASM_PAGES, MarkedBy, V86Marks, trackingUnavailable, writerName } from "./v86-tracking.ts";

/**
 * v86's boot orders (copy/v86 src/rtc.js): which drive the BIOS tries first, second and third,
 * one per nibble. v86's own default is cdFirst, or hdFirst with a hard disk, fdFirst with a floppy.
 */
export const V86BootOrder = { cdFirst: 0x123, hdFirst: 0x312, fdFirst: 0x321 } as const;

/** Floppy sizes v86's controller takes as they are (a loadable of another size cannot be padded). */
const FLOPPY_KIB = [160, 180, 320, 360, 720, 1200, 1440, 1722, 2880];

/**
 * Options of a {@link V86Machine}, named after v86's own; a standby must use the same as its
 * primary (and open its own copy of each disk image).
 *
 * What boots: `multiboot` or `bzimage` when given; otherwise the BIOS boots a drive in
 * `bootOrder` when any drive or BIOS is given; otherwise tandem's built-in guest (multiboot).
 */
export interface V86MachineOptions {
  /** Guest RAM in bytes, a multiple of 1 MiB. Default 32 MiB. With an initrd, more than 64 MiB plus the initrd: v86 loads it at 64 MiB. */
  memoryBytes?: number;
  /** The system BIOS image. Needed by all but a multiboot kernel; default Debian's SeaBIOS (firmware.ts). */
  bios?: Uint8Array;
  /** The VGA BIOS image. Default: SeaBIOS's when the BIOS is the default one, else none. */
  vgaBios?: Uint8Array;
  /** A multiboot kernel to boot (no BIOS needed). Default: tandem's built-in guest, when nothing else boots. */
  multiboot?: Uint8Array;
  /** A Linux kernel (bzImage) to boot through the BIOS. */
  bzimage?: Uint8Array;
  /** An initial ramdisk for the bzImage or multiboot kernel. */
  initrd?: Uint8Array;
  /** The kernel's command line, e.g. "console=ttyS0" for Linux or "hz=20 dirty=16" for the built-in guest. */
  cmdline?: string;
  /** The first IDE hard disk; null or absent for none. */
  hda?: MachineDisk | null;
  /** The second IDE hard disk (v86 attaches it only beside an hda). */
  hdb?: MachineDisk | null;
  /** The CD-ROM (secondary IDE master): always read-only, the guest's writes never reach it. */
  cdrom?: MachineDisk | null;
  /** The floppy disk, of a standard floppy size (360 KiB, 720 KiB, 1.44 MiB...). */
  fda?: MachineDisk | null;
  /**
   * The built-in guest's disk, as hda; kept for callers from before `hda`. Default, for the
   * built-in guest only: a zeroed 1 MiB disk in memory. Give `disk` or `hda`, not both.
   */
  disk?: MachineDisk | null;
  /** The BIOS's boot order ({@link V86BootOrder}); default v86's (hard disk first with an hda, else CD-ROM). */
  bootOrder?: number;
  /** VGA memory in bytes, part of every device state; v86 raises anything smaller to 256 KiB, the default. */
  vgaMemoryBytes?: number;
  /**
   * Run v86 on a shared WebAssembly.Memory, so that a second thread can help find the pages
   * the guest changed (the checkpoint pause halves on two cores). Default: true where the
   * runtime has SharedArrayBuffer. It changes nothing in the guest or its saved state, so a
   * primary and its standby may differ in it.
   */
  sharedMemory?: boolean;
  /**
   * Connect the guest's first network card (v86's NE2000) to tandem: frames it sends become
   * outputs of channel "net0", held until their checkpoint commits, and {@link V86Machine.nic}
   * takes frames from the network (v86-nic.ts). Default false: the card is there but its cable
   * is unplugged, and frames it sends go nowhere.
   */
  network?: boolean;
  /**
   * Write tracking: "marks" (the default) has v86 mark every page it writes, so `dirtyLogs`
   * holds a log and a checkpoint reads only the marks; "verify" also compares all of RAM at
   * every checkpoint and fails with E_TRACKING_MISSED on a changed page not marked (for tests);
   * "off" leaves v86's code as it is and the engine detects changes. When tracking cannot be had
   * (another v86 version), the machine falls back to "off" and `tracking.reason` says why. It
   * changes nothing in the guest or its saved state, so a primary and its standby may differ in it.
   */
  tracking?: V86TrackingMode;
}

/** How a {@link V86Machine} finds the pages its guest wrote. */
export type V86TrackingMode = "marks" | "verify" | "off";

/** What a {@link V86Machine} tracks, and why not if it was asked to and does not. */
export interface V86Tracking {
  mode: V86TrackingMode;
  reason?: string;
}

/** The drives a v86 PC has, in the order their writable disks take in {@link V86Machine.disks}. */
export const V86_DRIVES = ["hda", "hdb", "fda", "cdrom"] as const;
/** One of {@link V86_DRIVES}. */
export type V86Drive = (typeof V86_DRIVES)[number];

/** The built-in guest (guest/counter): counts on serial0, dirties RAM, stamps disk sectors. */
export function builtInGuest(): Uint8Array {
  return new Uint8Array(readFileSync(new URL("../../../guest/counter/counter.bin", import.meta.url)));
}

/** v86's Wasm module, next to its JavaScript: v86 cannot find it by itself when loaded as ESM. */
function v86WasmPath(): string {
  return fileURLToPath(new URL("v86.wasm", import.meta.resolve("v86")));
}

/** v86's module as rewritten for each use (shared memory, store marks), compiled once per process. */
const compiledV86 = new Map<string, Promise<{ module: WebAssembly.Module; minPages: number }>>();

function compileV86(shared: boolean, marked: boolean): Promise<{ module: WebAssembly.Module; minPages: number }> {
  const key = `${shared}:${marked}`;
  let compiled = compiledV86.get(key);
  if (!compiled) {
    compiled = (async () => {
      const { bytes, minPages } = shareModuleMemory(readFileSync(v86WasmPath()), undefined, shared);
      const code = marked ? markModuleStores(bytes, { map: markMapAddress(minPages), mark: MarkedBy.Core }) : bytes;
      return { module: await WebAssembly.compile(code), minPages };
    })();
    compiled.catch(() => compiledV86.delete(key));
    compiledV86.set(key, compiled);
  }
  return compiled;
}

/** The mark map lies just past the memory v86's module declares (v86-tracking.ts says why that is free). */
function markMapAddress(minPages: number): number {
  return minPages * 65536;
}

/**
 * A `wasm_fn` for v86: instantiates its rewritten module over a new memory tandem makes (shared,
 * or with room for the mark map), and reports the marks, if any, through `made`.
 */
function instantiateV86(shared: boolean, marked: boolean, made: (marks: V86Marks | undefined) => void) {
  return async (imports: WebAssembly.Imports): Promise<WebAssembly.Exports> => {
    const { module, minPages } = await compileV86(shared, marked);
    const memory = new WebAssembly.Memory({ initial: minPages + (marked ? MARK_MAP_WASM_PAGES : 0), maximum: MAX_WASM_PAGES, shared });
    const marks = marked ? new V86Marks(memory, markMapAddress(minPages)) : undefined;
    made(marks);
    const env = marks ? marks.wrapImports(imports.env as Record<string, unknown>) : imports.env;
    return (await WebAssembly.instantiate(module, { ...imports, env: { ...env, memory } as WebAssembly.ModuleImports })).exports;
  };
}

const MIB = 1 << 20;
/** Where v86 puts an initrd in guest RAM (copy/v86 src/kernel.js, load_kernel). */
const INITRD_ADDRESS = 64 * MIB;
const MAX_MIB = 1920;
const STARTUP_TIMEOUT_MS = 30_000;
const NEWLINE = 10;

/** A v86 PC as a replicable machine. */
export class V86Machine implements Machine {
  readonly memory: readonly GuestMemory[];
  readonly dirtyLogs: readonly (DirtyLog | undefined)[];
  /** Whether v86 marks the pages it writes (see {@link V86MachineOptions.tracking}). */
  readonly tracking: V86Tracking;
  /**
   * The writable drives' disks, whose writes travel in checkpoints: of hda, hdb and fda, those
   * present and not read-only, in that order (a disk's index here is its number in the stream).
   */
  readonly disks: readonly MachineDisk[];
  /** Every drive present, writable or not, by name, as v86 sees it. */
  readonly drives: Readonly<Partial<Record<V86Drive, V86Disk>>>;
  /** What the guest is built from (v86-identity.ts); a standby's must be the same. */
  readonly identity: GuestIdentity;
  /** The emulator, for anything tandem does not cover (screen, keyboard, more listeners). */
  readonly emulator: V86;
  /** The first network card, bridged to outputs and inputs when created with `network: true`. */
  readonly nic: V86Nic | undefined;
  readonly #core: V86Core;
  #running = false;
  #destroyed = false;
  #line: number[] = [];
  #output: (output: MachineOutput) => void = () => {};
  #diskWrite: (disk: number, offset: number, data: Uint8Array) => void = () => {};

  private constructor(emulator: V86, core: V86Core, drives: Partial<Record<V86Drive, V86Disk>>, disks: MachineDisk[], network: boolean,
    identity: GuestIdentity, tracking: V86Tracking, marks: MarkMapDirtyLog | undefined) {
    this.emulator = emulator;
    this.identity = identity;
    this.#core = core;
    const ram = v86Ram(core);
    this.memory = [new GuestMemory(ram.memory, { offset: ram.offset, size: ram.size })];
    this.tracking = tracking;
    if (marks && tracking.mode === "verify") {
      const lastWrite = (page: number) => {
        const last = marks.lastMark(page);
        return last ? `marked in epoch ${last.epoch} by ${writerName(last.mark)}` : "not marked since the log was armed";
      };
      this.dirtyLogs = [new VerifyingDirtyLog(marks, new DetectingDirtyLog(this.memory[0]), lastWrite)];
    } else {
      this.dirtyLogs = [marks];
    }
    this.drives = drives;
    this.disks = disks;
    emulator.add_listener("serial0-output-byte", (byte: number) => this.#serial(byte));
    this.nic = network ? new V86Nic(v86NetworkBus(emulator), (o) => this.#output(o)) : undefined;
  }

  /** Builds a v86 instance, stopped before its first instruction; `resume()` starts the guest. */
  static async create(options: V86MachineOptions = {}): Promise<V86Machine> {
    const memoryBytes = options.memoryBytes ?? 32 * MIB;
    // RAM and tandem's shadow of it share v86's 32-bit Wasm memory (4 GiB) with v86's own data.
    if (!Number.isInteger(memoryBytes) || memoryBytes < 4 * MIB || memoryBytes % MIB !== 0 || memoryBytes > MAX_MIB * MIB) {
      throw new TandemError(ErrorCode.BadArgument, `memoryBytes ${memoryBytes}: a whole number of MiB from 4 to ${MAX_MIB}`);
    }
    const boot = bootOf(options);
    const disks = drivesOf(options, boot);
    // Guest writes reach the machine once it exists; none can happen before (the guest is stopped).
    let diskWritten: (disk: number, offset: number, data: Uint8Array) => void = () => {};
    const shared = options.sharedMemory ?? typeof SharedArrayBuffer !== "undefined";
    const asked = options.tracking ?? "marks";
    if (asked !== "marks" && asked !== "verify" && asked !== "off") {
      throw new TandemError(ErrorCode.BadArgument, `tracking: ${String(asked)}; expected "marks", "verify" or "off"`);
    }
    let reason = asked === "off" ? undefined : trackingUnavailable();
    const marked = asked !== "off" && reason === undefined;
    let marks: V86Marks | undefined;
    const v86Options: V86Options = {
      wasm_path: v86WasmPath(),
      memory_size: memoryBytes,
      vga_memory_size: options.vgaMemoryBytes ?? 256 * 1024,
      autostart: false,
      disable_speaker: true,
      disable_keyboard: true,
      disable_mouse: true,
      // The NE2000's MAC and its 32 KiB of buffer memory come back with its state; without this
      // v86 keeps the new instance's random MAC and buffer, and a standby's card would drop
      // frames sent to the guest's address and read stale packets from its ring.
      preserve_mac_from_state_image: true,
    };
    const multiboot = boot === "builtin" ? builtInGuest() : options.multiboot;
    if (multiboot) v86Options.multiboot = image(multiboot);
    if (options.bzimage) v86Options.bzimage = image(options.bzimage);
    if (options.initrd) {
      if (memoryBytes <= INITRD_ADDRESS + options.initrd.byteLength) {
        throw new TandemError(ErrorCode.BadArgument,
          `memoryBytes ${memoryBytes / MIB} MiB is too small for a ${options.initrd.byteLength}-byte initrd: v86 loads it at 64 MiB, so give more than ${Math.ceil((INITRD_ADDRESS + options.initrd.byteLength) / MIB)} MiB`);
      }
      v86Options.initrd = image(options.initrd);
    }
    if (options.cmdline) v86Options.cmdline = options.cmdline;
    let firmware: Firmware | undefined;
    if (boot !== "builtin" && boot !== "multiboot") {
      firmware = options.bios ? { bios: options.bios, ...(options.vgaBios ? { vgaBios: options.vgaBios } : {}) } : debianSeaBios();
      v86Options.bios = image(firmware.bios);
      if (firmware.vgaBios) v86Options.vga_bios = image(firmware.vgaBios);
    } else if (options.bios || options.vgaBios) {
      throw new TandemError(ErrorCode.BadArgument, "a multiboot kernel boots without a BIOS; give bios with a bzimage or a drive to boot");
    }
    if (options.bootOrder !== undefined) {
      if (!Number.isInteger(options.bootOrder) || options.bootOrder <= 0 || options.bootOrder > 0xfff) {
        throw new TandemError(ErrorCode.BadArgument, `bootOrder ${options.bootOrder}: one drive per hex digit, e.g. 0x312 (hard disk, CD-ROM, floppy); see V86BootOrder`);
      }
      v86Options.boot_order = options.bootOrder as V86Options["boot_order"];
    }
    if (shared || marked) v86Options.wasm_fn = instantiateV86(shared, marked, (made) => void (marks = made));
    const drives: Partial<Record<V86Drive, V86Disk>> = {};
    const writable: MachineDisk[] = [];
    for (const name of V86_DRIVES) {
      const disk = disks[name];
      if (!disk) continue;
      const readOnly = name === "cdrom" || disk.readOnly === true;
      const index = writable.length;
      if (!readOnly) writable.push(disk);
      drives[name] = new V86Disk(disk, (offset, data) => diskWritten(index, offset, data), readOnly);
      // v86 takes any object with its loadable's methods as a drive; its typings only name images.
      v86Options[name] = drives[name] as unknown as V86Options["hda"];
    }
    const emulator = new V86(v86Options);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new TandemError(ErrorCode.EmulatorStart, `v86 did not load within ${STARTUP_TIMEOUT_MS} ms`)), STARTUP_TIMEOUT_MS);
      emulator.add_listener("emulator-loaded", () => {
        clearTimeout(timer);
        resolve();
      });
    });
    const core = checkV86Internals(emulator);
    let log: MarkMapDirtyLog | undefined;
    if (marks) {
      const attached = marks.attach(core, v86Ram(core));
      if (typeof attached === "string") reason = attached;
      else log = attached;
    }
    // Before the guest first runs, so that no code is ever compiled against the unshared
    // declaration, and none runs unmarked.
    const map = marks?.map;
    if (shared || map !== undefined) {
      rewriteJitCode(core, (module) => {
        const code = shared ? shareModuleMemory(module).bytes : module;
        return map === undefined ? code as Uint8Array<ArrayBuffer> : markModuleStores(code, { map, mark: MarkedBy.Jit });
      });
    }
    if (reason !== undefined) console.warn(`tandem: v86 write tracking is off, the engine will compare all of RAM: ${reason}`);
    const tracking: V86Tracking = log ? { mode: asked } : { mode: "off", ...(reason === undefined ? {} : { reason }) };
    // What the machine is built from, defaults included (the BIOS in use, the built-in guest).
    const identity = v86Identity({
      ...options, ...disks, ...firmware, multiboot,
      memoryBytes, vgaMemoryBytes: v86Options.vga_memory_size!,
    });
    const machine = new V86Machine(emulator, core, drives, writable, options.network ?? false, identity, tracking, log);
    diskWritten = (disk, offset, data) => machine.#diskWrite(disk, offset, data);
    return machine;
  }

  get running(): boolean {
    return this.#running;
  }

  /**
   * Stops the guest at once: v86 runs guest code only inside its own event-loop ticks, and a tick
   * that finds the stop flag set runs nothing. A partial output line ends its epoch here.
   */
  pause(): void {
    this.#core.stop();
    this.#running = false;
    this.nic?.paused();
    this.#flushLine();
  }

  /** Lets the guest run; a destroyed machine stays stopped (an engine winding down may ask). */
  resume(): void {
    if (this.#destroyed || this.#running) return;
    this.#running = true;
    this.#core.run();
    this.nic?.resumed();
  }

  saveDevices(): Uint8Array {
    return saveDeviceState(this.#core);
  }

  restoreDevices(state: Uint8Array): void {
    restoreDeviceState(this.#core, state);
  }

  onOutput(sink: (output: MachineOutput) => void): void {
    this.#output = sink;
  }

  onDiskWrite(sink: (disk: number, offset: number, data: Uint8Array) => void): void {
    this.#diskWrite = sink;
  }

  /** Stops the emulator for good and frees its timers; the machine cannot run again. */
  async destroy(): Promise<void> {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.pause();
    await this.emulator.destroy();
    const memory = this.memory[0].wasmMemory;
    if (memory) closeCompareHelper(memory);
  }

  #serial(byte: number): void {
    this.#line.push(byte);
    if (byte === NEWLINE) this.#flushLine();
  }

  #flushLine(): void {
    if (this.#line.length === 0) return;
    const data = Uint8Array.from(this.#line);
    this.#line = [];
    this.#output({ channel: "serial0", data });
  }
}

/** What a machine boots, from its options (see {@link V86MachineOptions}). */
type Boot = "builtin" | "multiboot" | "bzimage" | "bios";

function bootOf(options: V86MachineOptions): Boot {
  if (options.multiboot && options.bzimage) throw new TandemError(ErrorCode.BadArgument, "give multiboot or bzimage, not both");
  if (options.multiboot) return "multiboot";
  if (options.bzimage) return "bzimage";
  const drive = options.hda || options.hdb || options.cdrom || options.fda;
  if (!drive && !options.bios) return "builtin";
  if (options.initrd) throw new TandemError(ErrorCode.BadArgument, "an initrd needs a kernel (bzimage or multiboot) to go with");
  if (options.cmdline) throw new TandemError(ErrorCode.BadArgument, "a command line needs a kernel (bzimage or multiboot); a BIOS-booted disk carries its own");
  if (!drive) throw new TandemError(ErrorCode.BadArgument, "nothing to boot: give a kernel (bzimage or multiboot) or a drive (hda, cdrom, fda)");
  return "bios";
}

/** The drives, checked, with the built-in guest's default disk. */
function drivesOf(options: V86MachineOptions, boot: Boot): Partial<Record<V86Drive, MachineDisk>> {
  if (options.disk !== undefined && options.hda !== undefined) throw new TandemError(ErrorCode.BadArgument, "give hda or disk (its older name), not both");
  const hda = options.hda !== undefined ? options.hda : options.disk !== undefined ? options.disk : boot === "builtin" ? new MemoryDisk(MIB) : null;
  const drives: Partial<Record<V86Drive, MachineDisk>> = {};
  if (hda) drives.hda = hda;
  if (options.hdb) {
    if (!hda) throw new TandemError(ErrorCode.BadArgument, "hdb needs an hda: v86 attaches the second hard disk only beside a first");
    drives.hdb = options.hdb;
  }
  if (options.fda) {
    if (!FLOPPY_KIB.some((kib) => kib * 1024 === options.fda!.size)) {
      throw new TandemError(ErrorCode.BadArgument, `fda of ${options.fda.size} bytes: a floppy image must be one of ${FLOPPY_KIB.join(", ")} KiB`);
    }
    drives.fda = options.fda;
  }
  if (options.cdrom) drives.cdrom = options.cdrom;
  for (const [name, disk] of Object.entries(drives)) {
    if (!Number.isSafeInteger(disk.size) || disk.size <= 0 || disk.size % 512 !== 0) {
      throw new TandemError(ErrorCode.BadArgument, `${name} of ${disk.size} bytes: a drive must be a positive whole number of 512-byte sectors`);
    }
  }
  return drives;
}

/** An image as v86 takes it: its own copy of the bytes. */
function image(bytes: Uint8Array): { buffer: ArrayBuffer } {
  return { buffer: bytes.slice().buffer };
}
