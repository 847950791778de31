/**
 * The built-in guest: a machine written in TypeScript that needs no emulator, so every property
 * of the replication engine can be checked (and benchmarked) without v86. It is deterministic:
 * from the same RAM, disk and device state, it produces the same writes and outputs. Each step:
 *
 * - counts (the counter is its device state, with its random generator and step number);
 * - writes the counter into `dirtyPages` pages chosen at random, marked in its bitmap dirty log;
 * - prints `counter N` on serial0;
 * - every `diskEvery` steps writes a 512-byte sector stamped with the counter and re-reads an
 *   earlier one, checking its stamp: a disk that lost or tore a write shows up as `diskErrors`,
 *   and as a line `disk errors N` (as the built-in v86 guest, guest/counter, prints it).
 *
 * While running it takes `stepsPerTick` steps every `tickMs` milliseconds.
 */

import { ErrorCode, TandemError } from "../errors.ts";
import { BitmapDirtyLog } from "../memory/bitmap-dirty-log.ts";
import { GuestMemory, PAGE_SIZE } from "../memory/guest-memory.ts";
import { WASM_PAGE_SIZE } from "../wasm/heap.ts";
import { formatSize, guestIdentity, type GuestIdentity } from "./guest-identity.ts";
import type { Machine, MachineDisk, MachineOutput } from "./machine.ts";
import { MemoryDisk } from "./memory-disk.ts";

/** Options of a {@link ReferenceMachine}; every machine of a replicated pair must use the same. */
export interface ReferenceMachineOptions {
  /** RAM bytes, a multiple of 64 KiB. Default 64 MiB. */
  memoryBytes?: number;
  /** Pages written per step. Default 1% of RAM's pages. */
  dirtyPages?: number;
  /** Disk bytes, a multiple of 512. Default 1 MiB. */
  diskBytes?: number;
  /** The disk (an image file, say); its size must be a multiple of 512. Default: a zeroed disk in memory of `diskBytes`. */
  disk?: MachineDisk;
  /** A disk write (and read-back) every this many steps; 0 for none. Default 10. */
  diskEvery?: number;
  /** Seed of the workload. Default 1. */
  seed?: number;
  /** While running: steps per tick, and ms between ticks. Defaults 1 and 1. */
  stepsPerTick?: number;
  tickMs?: number;
}

const SECTOR = 512;
/** Device state layout: "REFM", version, then the registers. Little-endian. */
const STATE_MAGIC = 0x4d464552; // "REFM"
const STATE_VERSION = 1;
const S_MAGIC = 0;
const S_VERSION = 4;
const S_COUNTER = 8; // f64: counts past 2^32 on a long run
const S_RANDOM = 16; // u32: the workload generator's state
const S_DISK_ERRORS = 20; // u32
const STATE_SIZE = 24;

/** The built-in deterministic guest. */
export class ReferenceMachine implements Machine {
  readonly memory: readonly GuestMemory[];
  readonly dirtyLogs: readonly BitmapDirtyLog[];
  readonly disks: readonly MachineDisk[];
  readonly identity: GuestIdentity;
  readonly #ram: GuestMemory;
  readonly #log: BitmapDirtyLog;
  readonly #disk: MachineDisk;
  readonly #dirtyPages: number;
  readonly #diskEvery: number;
  readonly #stepsPerTick: number;
  readonly #tickMs: number;
  #counter = 0;
  #random: number;
  #diskErrors = 0;
  #running = false;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #output: (output: MachineOutput) => void = () => {};
  #diskWrite: (disk: number, offset: number, data: Uint8Array) => void = () => {};

  constructor(options: ReferenceMachineOptions = {}) {
    const memoryBytes = options.memoryBytes ?? 64 << 20;
    const diskBytes = options.disk?.size ?? options.diskBytes ?? 1 << 20;
    if (!Number.isInteger(memoryBytes) || memoryBytes <= 0 || memoryBytes % WASM_PAGE_SIZE !== 0) {
      throw new TandemError(ErrorCode.BadArgument, `memoryBytes ${memoryBytes}: expected a positive multiple of 64 KiB`);
    }
    if (!Number.isInteger(diskBytes) || diskBytes < 2 * SECTOR || diskBytes % SECTOR !== 0) {
      throw new TandemError(ErrorCode.BadArgument, `diskBytes ${diskBytes}: expected a multiple of ${SECTOR}, at least two sectors`);
    }
    this.#ram = new GuestMemory(new WebAssembly.Memory({ initial: memoryBytes / WASM_PAGE_SIZE }), { size: memoryBytes });
    this.#log = new BitmapDirtyLog(this.#ram);
    this.#disk = options.disk ?? new MemoryDisk(diskBytes);
    this.memory = [this.#ram];
    this.dirtyLogs = [this.#log];
    this.disks = [this.#disk];
    this.#dirtyPages = Math.min(this.#ram.pageCount, options.dirtyPages ?? Math.max(1, Math.round(this.#ram.pageCount / 100)));
    this.#diskEvery = options.diskEvery ?? 10;
    this.#stepsPerTick = options.stepsPerTick ?? 1;
    this.#tickMs = options.tickMs ?? 1;
    this.#random = (options.seed ?? 1) >>> 0 || 1;
    // What a standby must share: the workload it goes on with after a takeover and the sizes its
    // state fills. The seed and the pace are not: the generator's state travels in the devices.
    this.identity = guestIdentity([
      { name: "machine", kind: "value", value: "reference" },
      { name: "memory", kind: "value", value: formatSize(memoryBytes) },
      { name: "disk", kind: "value", value: formatSize(diskBytes) },
      { name: "dirty pages", kind: "value", value: `${this.#dirtyPages} per step` },
      { name: "disk every", kind: "value", value: `${this.#diskEvery} steps` },
    ]);
  }

  /** Steps taken (the value printed last). */
  get counter(): number {
    return this.#counter;
  }

  /** Disk read-backs that found a sector other than the guest wrote. */
  get diskErrors(): number {
    return this.#diskErrors;
  }

  get running(): boolean {
    return this.#running;
  }

  pause(): void {
    this.#running = false;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  resume(): void {
    if (this.#running) return;
    this.#running = true;
    this.#schedule();
  }

  /** Takes `n` steps now (for tests and benches; the guest need not be running). */
  step(n = 1): void {
    for (let i = 0; i < n; i++) this.#step();
  }

  saveDevices(): Uint8Array {
    const state = new Uint8Array(STATE_SIZE);
    const view = new DataView(state.buffer);
    view.setUint32(S_MAGIC, STATE_MAGIC, true);
    view.setUint32(S_VERSION, STATE_VERSION, true);
    view.setFloat64(S_COUNTER, this.#counter, true);
    view.setUint32(S_RANDOM, this.#random, true);
    view.setUint32(S_DISK_ERRORS, this.#diskErrors, true);
    return state;
  }

  restoreDevices(state: Uint8Array): void {
    const view = new DataView(state.buffer, state.byteOffset, state.byteLength);
    if (state.length !== STATE_SIZE || view.getUint32(S_MAGIC, true) !== STATE_MAGIC || view.getUint32(S_VERSION, true) !== STATE_VERSION) {
      throw new TandemError(ErrorCode.BadArgument, "not the device state of a reference machine of this version");
    }
    const counter = view.getFloat64(S_COUNTER, true);
    if (!Number.isSafeInteger(counter) || counter < 0) throw new TandemError(ErrorCode.BadArgument, `device state counter ${counter}`);
    this.#counter = counter;
    this.#random = view.getUint32(S_RANDOM, true) || 1;
    this.#diskErrors = view.getUint32(S_DISK_ERRORS, true);
  }

  onOutput(sink: (output: MachineOutput) => void): void {
    this.#output = sink;
  }

  onDiskWrite(sink: (disk: number, offset: number, data: Uint8Array) => void): void {
    this.#diskWrite = sink;
  }

  #schedule(): void {
    this.#timer = setTimeout(() => {
      if (!this.#running) return;
      this.step(this.#stepsPerTick);
      this.#schedule();
    }, this.#tickMs);
  }

  #step(): void {
    const counter = ++this.#counter;
    const ram = this.#ram.bytes();
    const view = new DataView(ram.buffer, ram.byteOffset, ram.byteLength);
    for (let i = 0; i < this.#dirtyPages; i++) {
      const page = this.#next() % this.#ram.pageCount;
      const at = page * PAGE_SIZE + (this.#next() % (PAGE_SIZE / 4)) * 4;
      view.setUint32(at, counter >>> 0, true);
      this.#log.markRange(at, 4);
    }
    this.#output({ channel: "serial0", data: new TextEncoder().encode(`counter ${counter}\n`) });
    if (this.#diskEvery > 0 && counter % this.#diskEvery === 0) this.#exerciseDisk(counter);
  }

  /** Writes a sector stamped (sector, counter) and checks the stamp of the sector written before it. */
  #exerciseDisk(counter: number): void {
    const sectors = this.#disk.size / SECTOR;
    const round = counter / this.#diskEvery;
    const sector = round % sectors;
    const data = new Uint8Array(SECTOR);
    const view = new DataView(data.buffer);
    view.setUint32(0, sector, true);
    view.setFloat64(8, counter, true);
    data.fill(counter & 0xff, 16);
    this.#disk.write(sector * SECTOR, data);
    this.#diskWrite(0, sector * SECTOR, data);
    if (round < 2) return;
    const previous = (round - 1) % sectors;
    const back = new DataView(this.#disk.read(previous * SECTOR, SECTOR).buffer);
    if (back.getUint32(0, true) !== previous || back.getFloat64(8, true) !== counter - this.#diskEvery) {
      this.#diskErrors++;
      this.#output({ channel: "serial0", data: new TextEncoder().encode(`disk errors ${this.#diskErrors}\n`) });
    }
  }

  /** xorshift32: the workload's generator, part of the device state. */
  #next(): number {
    let x = this.#random;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.#random = x >>> 0;
    return this.#random;
  }
}
