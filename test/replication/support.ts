/** Shared pieces of the disk replication tests: image files, a guest that writes where it is told. */

import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Disk } from "../../host/disk/disk.ts";
import { createImage, openDisk } from "../../host/disk/registry.ts";
import type { Machine, MachineDisk, MachineOutput } from "../../host/machine/machine.ts";
import { ReferenceMachine, type ReferenceMachineOptions } from "../../host/machine/reference-machine.ts";
import { ChangeLog, ChangeLoggedDisk, changeLogPath } from "../../host/replication/change-log.ts";
import { pattern } from "../support/session.ts";

/** A new temporary directory. */
export function tempDir(): string {
  return mkdtempSync(join(tmpdir(), "tandem-diskrep-"));
}

/**
 * Creates a qcow2 image of `size` bytes at `path` (64 KiB clusters) and fills `allocated` of it
 * (a fraction) with seeded data, in 64 KiB blocks chosen at random; a few blocks are zeroed.
 */
export function makeImage(path: string, size: number, allocated: number, seed: number, format = "qcow2"): void {
  createImage(path, format, { size });
  const disk = openDisk(path);
  try {
    const block = 64 * 1024;
    const blocks = size / block;
    let x = seed >>> 0 || 1;
    const next = () => {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      return (x >>> 0) / 2 ** 32;
    };
    const data = pattern(block, seed);
    for (let b = 0; b < blocks; b++) {
      if (next() >= allocated) continue;
      data[0] = b & 0xff;
      data[1] = (b >> 8) & 0xff;
      disk.write(b * block, data);
    }
    disk.writeZeroes(block, block); // a zero cluster in the middle of data
  } finally {
    disk.close();
  }
}

/** The primary's image, opened with its change log. */
export function openPrimaryImage(path: string): ChangeLoggedDisk {
  const disk = openDisk(path);
  return new ChangeLoggedDisk(disk, ChangeLog.open(changeLogPath(path), disk.size));
}

/**
 * A reference machine whose tests can also make the guest write its disk anywhere (as a guest
 * would): such writes go to the disk and are reported like the machine's own.
 */
export class WritingMachine implements Machine {
  readonly inner: ReferenceMachine;
  readonly disk: MachineDisk;
  #sink: (disk: number, offset: number, data: Uint8Array) => void = () => {};

  constructor(options: ReferenceMachineOptions & { disk: MachineDisk }) {
    this.inner = new ReferenceMachine(options);
    this.disk = options.disk;
  }
  get identity() {
    return this.inner.identity;
  }
  get memory() {
    return this.inner.memory;
  }
  get dirtyLogs() {
    return this.inner.dirtyLogs;
  }
  get disks() {
    return this.inner.disks;
  }
  get running() {
    return this.inner.running;
  }
  pause(): void {
    this.inner.pause();
  }
  resume(): void {
    this.inner.resume();
  }
  saveDevices(): Uint8Array {
    return this.inner.saveDevices();
  }
  restoreDevices(state: Uint8Array): void {
    this.inner.restoreDevices(state);
  }
  onOutput(sink: (output: MachineOutput) => void): void {
    this.inner.onOutput(sink);
  }
  onDiskWrite(sink: (disk: number, offset: number, data: Uint8Array) => void): void {
    this.#sink = sink;
    this.inner.onDiskWrite(sink);
  }
  /** The guest writes `data` at `offset` (only while running: a paused guest writes nothing). */
  guestWrite(offset: number, data: Uint8Array): boolean {
    if (!this.inner.running) return false;
    this.disk.write(offset, data);
    this.#sink(0, offset, data);
    return true;
  }
}

/** A disk whose reads by the copy are remembered, so the guest can write just where the copy is. */
export class WatchedDisk extends ChangeLoggedDisk {
  lastRead = 0;
  override read(offset: number, length: number): Uint8Array {
    this.lastRead = offset;
    return super.read(offset, length);
  }
  static over(path: string): WatchedDisk {
    const disk: Disk = openDisk(path);
    return new WatchedDisk(disk, ChangeLog.open(changeLogPath(path), disk.size));
  }
}

/** The machine both sides of the process tests use (the disk comes separately). */
export const CHILD_MACHINE = { memoryBytes: 1 << 20, dirtyPages: 4, diskEvery: 0 } as const;

/** The machine of the primary-kill test, on both sides: its own guest writes a sector every step. */
export const WRITING_MACHINE = { ...CHILD_MACHINE, diskEvery: 1, stepsPerTick: 4 } as const;
