/**
 * Capturing a machine's changes into checkpoint stream records, shared by replication and
 * migration: the dirty pages of every region (full, or flagged as zero) and disk writes.
 */

import type { Machine } from "../machine/machine.ts";
import { DetectingDirtyLog } from "../memory/detecting-dirty-log.ts";
import type { DirtyLog } from "../memory/dirty-log.ts";
import { PAGE_SIZE } from "../memory/guest-memory.ts";
import { PageGatherer } from "../memory/page-gather.ts";
import { ZeroPageFinder } from "../memory/zero-pages.ts";
import { DeviceStateEncoder } from "../protocol/device-delta.ts";
import { PageDeltaCodec } from "../protocol/page-delta.ts";
import type { StreamWriter } from "../protocol/stream/writer.ts";

/** A disk write, as the machine reported it. */
export interface DiskWrite {
  disk: number;
  offset: number;
  data: Uint8Array;
}

const DISK_CHUNK = 1 << 20;

/**
 * The dirty logs of a machine's regions (its own, or detecting ones) and their page gatherers.
 * With compression it also keeps, per region, the image the receiver holds, and sends a changed
 * page as a delta against it when that is smaller (Remus kept such a cache too; this one is the
 * whole of RAM, so compression doubles the memory replication uses).
 */
export class MemoryCapture {
  readonly #logs: DirtyLog[];
  readonly #gatherers: PageGatherer[];
  readonly #sent: Uint8Array[] | undefined;
  readonly #codec: PageDeltaCodec | undefined;

  constructor(machine: Machine, options: { compression?: boolean } = {}) {
    this.#logs = machine.memory.map((region, i) => machine.dirtyLogs[i] ?? new DetectingDirtyLog(region));
    // A detecting log's shadow holds the pages as collected, even if the guest runs meanwhile.
    this.#gatherers = this.#logs.map((log, i) => new PageGatherer(log instanceof DetectingDirtyLog ? log.shadowPages() : machine.memory[i]));
    if (options.compression) {
      this.#sent = machine.memory.map((region) => new Uint8Array(region.size));
      this.#codec = new PageDeltaCodec();
    }
  }

  /** Arms every log: call before the first capture, so no write is lost. */
  arm(): void {
    for (const log of this.#logs) log.arm();
  }

  /**
   * Writes the pages dirtied since the last capture (all of them the first time) as PAGES and
   * ZERO_PAGES records (DELTA_PAGES too with compression), copying their bytes now. Returns how
   * many pages, and how many were zero or went as deltas.
   */
  capture(writer: StreamWriter): { pages: number; zeroPages: number; deltaPages: number } {
    let pages = 0;
    let zeroPages = 0;
    let deltaPages = 0;
    this.#logs.forEach((log, region) => {
      const dirty = log.collect();
      const zero = new Uint32Array(dirty.length);
      let zeros = 0;
      const sent = this.#sent?.[region];
      this.#gatherers[region].gather(dirty, (full, bytes, zeroed) => {
        zero.set(zeroed, zeros);
        zeros += zeroed.length;
        if (sent) deltaPages += this.#writeCompressed(writer, region, sent, full, bytes, zeroed);
        else if (full.length > 0) writer.pagesFrom(region, full, bytes);
      });
      writer.zeroPages(region, zero.subarray(0, zeros));
      pages += dirty.length;
      zeroPages += zeros;
    });
    return { pages, zeroPages, deltaPages };
  }

  /**
   * Writes one window of gathered pages as deltas against `sent` (the receiver's image) where
   * that is smaller, the rest as full pages, and brings `sent` up to date. Returns the deltas.
   */
  #writeCompressed(writer: StreamWriter, region: number, sent: Uint8Array, full: Uint32Array, bytes: Uint8Array, zeroed: Uint32Array): number {
    const deltas: { pfn: number; delta: Uint8Array }[] = [];
    const whole = new Uint32Array(full.length);
    let kept = 0;
    full.forEach((pfn, i) => {
      const page = bytes.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE);
      const delta = this.#codec!.encode(sent.subarray(pfn * PAGE_SIZE, (pfn + 1) * PAGE_SIZE), page);
      sent.set(page, pfn * PAGE_SIZE);
      if (delta !== undefined) {
        deltas.push({ pfn, delta });
        return;
      }
      // Pages that stay whole move up over the ones sent as deltas (the window is ours to reuse).
      bytes.copyWithin(kept * PAGE_SIZE, i * PAGE_SIZE, (i + 1) * PAGE_SIZE);
      whole[kept++] = pfn;
    });
    for (const pfn of zeroed) sent.fill(0, pfn * PAGE_SIZE, (pfn + 1) * PAGE_SIZE);
    writer.deltaPages(region, deltas);
    writer.pagesFrom(region, whole.subarray(0, kept), bytes.subarray(0, kept * PAGE_SIZE));
    return deltas.length;
  }
}

/**
 * The machine's device state, whole in the first capture and then as a delta against the one
 * before (most of it, video memory and controllers' buffers, does not change between
 * checkpoints). Only for a stream whose receiver applies every checkpoint in order, as a standby
 * does: the delta's base is the previous checkpoint's state.
 */
export class DeviceCapture {
  readonly #encoder = new DeviceStateEncoder();

  /** Writes the device state as DEVICE_STATE or DEVICE_STATE_DELTA; returns the bytes it took. */
  capture(machine: Machine, writer: StreamWriter): number {
    const state = machine.saveDevices();
    const delta = this.#encoder.encode(state);
    if (delta) writer.deviceStateDelta(0, delta);
    else writer.deviceState(0, state);
    return (delta ?? state).length;
  }
}

/** Writes every disk of `machine` whole, as DISK_WRITES records (the first capture carries disks so). */
export function captureWholeDisks(machine: Machine, writer: StreamWriter): void {
  machine.disks.forEach((disk, i) => {
    const chunks = [];
    for (let at = 0; at < disk.size; at += DISK_CHUNK) chunks.push({ offset: at, data: disk.read(at, Math.min(DISK_CHUNK, disk.size - at)) });
    writer.diskWrites(i, chunks);
  });
}

/** Writes `writes` as one DISK_WRITES record per disk that has any, in order. */
export function captureDiskWrites(machine: Machine, writes: readonly DiskWrite[], writer: StreamWriter): void {
  machine.disks.forEach((_, i) => {
    const mine = writes.filter((w) => w.disk === i);
    if (mine.length > 0) writer.diskWrites(i, mine);
  });
}

/**
 * Writes every page of every region (zero ones as flags), for a saved image. Uses no dirty log,
 * so it does not disturb a replication that may be using the machine's own.
 */
export function captureAllMemory(machine: Machine, writer: StreamWriter): { pages: number; zeroPages: number } {
  let pages = 0;
  let zeroPages = 0;
  machine.memory.forEach((region, index) => {
    const all = Uint32Array.from({ length: region.pageCount }, (_, i) => i);
    const zero = new Set(new ZeroPageFinder(region).find(all));
    const ram = region.bytes();
    writer.pages(index, all.filter((p) => !zero.has(p)), (pfn) => ram.subarray(pfn * PAGE_SIZE, (pfn + 1) * PAGE_SIZE));
    writer.zeroPages(index, [...zero]);
    pages += all.length;
    zeroPages += zero.size;
  });
  return { pages, zeroPages };
}
