/**
 * Capturing a machine's changes into checkpoint stream records, shared by replication and
 * migration: the dirty pages of every region (full, or flagged as zero) and disk writes.
 */

import type { Machine } from "../machine/machine.ts";
import { DetectingDirtyLog } from "../memory/detecting-dirty-log.ts";
import type { DirtyLog } from "../memory/dirty-log.ts";
import { PAGE_SIZE } from "../memory/guest-memory.ts";
import { ZeroPageFinder } from "../memory/zero-pages.ts";
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
 * The dirty logs of a machine's regions (its own, or detecting ones) and their zero-page finders.
 * With compression it also keeps, per region, the image the receiver holds, and sends a changed
 * page as a delta against it when that is smaller (Remus kept such a cache too; this one is the
 * whole of RAM, so compression doubles the memory replication uses).
 */
export class MemoryCapture {
  readonly #machine: Machine;
  readonly #logs: DirtyLog[];
  readonly #zeros: ZeroPageFinder[];
  readonly #sent: Uint8Array[] | undefined;
  readonly #codec: PageDeltaCodec | undefined;

  constructor(machine: Machine, options: { compression?: boolean } = {}) {
    this.#machine = machine;
    this.#logs = machine.memory.map((region, i) => machine.dirtyLogs[i] ?? new DetectingDirtyLog(region));
    this.#zeros = machine.memory.map((region) => new ZeroPageFinder(region));
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
   * ZERO_PAGES records, copying their bytes now. Returns how many pages, and how many were zero.
   */
  capture(writer: StreamWriter): { pages: number; zeroPages: number; deltaPages: number } {
    let pages = 0;
    let zeroPages = 0;
    let deltaPages = 0;
    this.#logs.forEach((log, region) => {
      const dirty = log.collect();
      const zero = new Set(this.#zeros[region].find(dirty));
      const source = log instanceof DetectingDirtyLog ? log.shadow() : this.#machine.memory[region].bytes();
      const page = (pfn: number) => source.subarray(pfn * PAGE_SIZE, (pfn + 1) * PAGE_SIZE);
      let full = dirty.filter((p) => !zero.has(p));
      const sent = this.#sent?.[region];
      if (sent) {
        const deltas: { pfn: number; delta: Uint8Array }[] = [];
        full = full.filter((pfn) => {
          const delta = this.#codec!.encode(sent.subarray(pfn * PAGE_SIZE, (pfn + 1) * PAGE_SIZE), page(pfn));
          sent.set(page(pfn), pfn * PAGE_SIZE);
          if (delta === undefined) return true;
          deltas.push({ pfn, delta });
          return false;
        });
        for (const pfn of zero) sent.fill(0, pfn * PAGE_SIZE, (pfn + 1) * PAGE_SIZE);
        writer.deltaPages(region, deltas);
        deltaPages += deltas.length;
      }
      writer.pages(region, full, page);
      writer.zeroPages(region, [...zero]);
      pages += dirty.length;
      zeroPages += zero.size;
    });
    return { pages, zeroPages, deltaPages };
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
