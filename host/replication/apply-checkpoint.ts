/**
 * Applies a received checkpoint to a standby machine, all or nothing. The transaction layer
 * already guarantees that only complete checkpoints arrive; this makes sure a complete but bad
 * one (a page delta that does not decode, a disk write past the disk, a layout that is not the
 * machine's) cannot half-apply: everything is checked and staged first, then written.
 */

import { ErrorCode, TandemError } from "../errors.ts";
import type { Machine } from "../machine/machine.ts";
import { applyDeviceStateDelta } from "../protocol/device-delta.ts";
import type { PageDeltaCodec } from "../protocol/page-delta.ts";
import type { StreamHeader, StreamRecord } from "../protocol/stream/format.ts";
import type { StandbyDisks } from "./disk-replica.ts";

/** What a checkpoint carried besides RAM and disks. */
export interface AppliedCheckpoint {
  /** The checkpoint number, from CHECKPOINT_END. */
  checkpoint: number;
  /** The primary's generation, from CHECKPOINT_END. */
  generation: number;
  /** The device state, if the checkpoint carried one, whole or as a delta (restore it when the standby takes over). */
  devices: Uint8Array | undefined;
  /** The epoch's outputs, in order (copies). */
  outputs: { seq: number; channel: string; data: Uint8Array }[];
  /** The highest output seq sealed by the primary so far, when CHECKPOINT_END carries it. */
  lastSeq?: number;
}

/** Checks that a stream describes `machine`'s memory: same page size, same regions. */
export function checkLayout(header: StreamHeader, machine: Machine): void {
  const regions = machine.memory;
  if (header.pageSize !== 4096 || header.regions.length !== regions.length ||
      header.regions.some((r, i) => r.size !== regions[i].size)) {
    throw new TandemError(ErrorCode.StreamFormat,
      `the stream describes ${header.regions.length} regions (${header.regions.map((r) => r.size).join(", ")} bytes, pages of ${header.pageSize}); ` +
      `this machine has ${regions.length} (${regions.map((r) => r.size).join(", ")} bytes, pages of 4096): configure both machines alike`);
  }
}

/**
 * Applies one checkpoint's `records` (ending with CHECKPOINT_END) to a paused `machine`, whose
 * memory already holds the previous checkpoint, and whose device state was `devices` (the base of
 * a DEVICE_STATE_DELTA). Throws E_STREAM_FORMAT without changing anything if any record cannot
 * be applied. With `disks`, disk writes go through them (a journal per image, durable when this
 * returns) instead of straight into the machine's disks; if they fail (a full or read-only
 * image), RAM is left as it was.
 */
export function applyCheckpoint(machine: Machine, records: readonly StreamRecord[], codec: PageDeltaCodec, devices?: Uint8Array, disks?: StandbyDisks): AppliedCheckpoint {
  const end = records[records.length - 1];
  if (end?.type !== "checkpoint-end") throw new TandemError(ErrorCode.StreamFormat, "a checkpoint must end with CHECKPOINT_END");
  const writes: (() => void)[] = [];
  const diskWrites = new Map<number, { offset: number; data: Uint8Array }[]>();
  const previous = devices;
  devices = undefined;
  const outputs: { seq: number; channel: string; data: Uint8Array }[] = [];
  for (const record of records.slice(0, -1)) {
    switch (record.type) {
      case "pages": {
        const ram = region(machine, record.region).bytes();
        record.pfns.forEach((pfn, i) => {
          const data = record.data.subarray(i * 4096, (i + 1) * 4096);
          writes.push(() => ram.set(data, pfn * 4096));
        });
        break;
      }
      case "zero-pages": {
        const ram = region(machine, record.region).bytes();
        for (const pfn of record.pfns) writes.push(() => ram.fill(0, pfn * 4096, (pfn + 1) * 4096));
        break;
      }
      case "delta-pages": {
        const ram = region(machine, record.region).bytes();
        for (const { pfn, delta } of record.pages) {
          // Decoded now, into a copy: a delta that does not decode fails before anything is written.
          const page = ram.slice(pfn * 4096, (pfn + 1) * 4096);
          codec.apply(page, delta);
          writes.push(() => ram.set(page, pfn * 4096));
        }
        break;
      }
      case "device-state":
        devices = record.data.slice();
        break;
      case "device-state-delta":
        if (!previous) throw new TandemError(ErrorCode.StreamFormat, "a DEVICE_STATE_DELTA with no device state before it");
        devices = applyDeviceStateDelta(previous, record.delta, codec);
        break;
      case "disk-writes": {
        const disk = machine.disks[record.disk];
        if (!disk) throw new TandemError(ErrorCode.StreamFormat, `a write to disk ${record.disk}; the machine has ${machine.disks.length}`);
        for (const { offset, data } of record.writes) {
          if (offset + data.length > disk.size) {
            throw new TandemError(ErrorCode.StreamFormat, `a write of ${data.length} bytes at ${offset} passes the end of disk ${record.disk} (${disk.size} bytes)`);
          }
          const copy = data.slice();
          if (disks) {
            const list = diskWrites.get(record.disk) ?? [];
            list.push({ offset, data: copy });
            diskWrites.set(record.disk, list);
          } else writes.push(() => disk.write(offset, copy));
        }
        break;
      }
      case "outputs":
        for (const o of record.outputs) outputs.push({ seq: o.seq, channel: o.channel, data: o.data.slice() });
        break;
      case "checkpoint-end":
      case "end":
      case "handover":
      case "disk-sync-begin":
      case "disk-sync-writes":
      case "disk-sync-zeroes":
      case "disk-sync-done":
        throw new TandemError(ErrorCode.StreamFormat, `${record.type.toUpperCase()} inside a checkpoint`);
    }
  }
  // The disks first: it is the part that can fail (a full or read-only image), and a checkpoint
  // whose disks failed must leave RAM as it was.
  disks?.applyCheckpoint(diskWrites, end.checkpoint, end.generation);
  for (const write of writes) write();
  return { checkpoint: end.checkpoint, generation: end.generation, devices, outputs, lastSeq: end.lastSeq };
}

function region(machine: Machine, index: number) {
  const memory = machine.memory[index];
  if (!memory) throw new TandemError(ErrorCode.StreamFormat, `region ${index}; the machine has ${machine.memory.length}`);
  return memory;
}
