/**
 * `npm run bench -- disk`: qcow2 against raw, through the Disk API (createImage, then openDisk),
 * both sides in one run so machine noise cancels out of the ratios.
 *
 * randwrite: 20,000 writes of 4 KiB at 4 KiB-aligned offsets drawn by a seeded PRNG (the same
 *            offsets and bytes for both) into a fresh 1 GiB image, then one flush(); the timing
 *            covers the writes and the flush. The image is created and opened untimed. Also a
 *            raw image behind a TrackedDisk (host/disk/write-tracker.ts), for the tracker's cost.
 * overlap:   the same writes into two fresh qcow2 images, with and without the overlap checks
 *            (overlapChecks: false), in one loop, a slice at a time (issue 22: the checks keep at
 *            least 0.9 of the unchecked rate).
 * seqread:   sequential reads of a fully written 256 MiB image (the same bytes in both) with
 *            64 KiB requests; also 4 KiB requests over its first 64 MiB. Both files sit in the
 *            page cache, alike, so this measures the formats' own work.
 *
 * Every measure runs in rounds (one untimed warm-up round first), alternating which side goes
 * first; ratios are the median of the per-round ratios, rates the median of the rounds.
 */

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Disk } from "../host/disk/disk.ts";
import { createImage, formatNames, openDisk } from "../host/disk/registry.ts";
import { TrackedDisk } from "../host/disk/write-tracker.ts";
import { seededRandom } from "../host/prng.ts";
import type { Progress } from "./memory.ts";
import { median } from "./timing.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const RANDWRITE_DISK = GiB;
const RANDWRITE_COUNT = 20_000;
const RANDWRITE_BYTES = 4 * KiB;
const SEQREAD_DISK = 256 * MiB;
const SEQREAD_REQUEST = 64 * KiB;
const SEQREAD_SMALL_REQUEST = 4 * KiB;
const SEQREAD_SMALL_SPAN = 64 * MiB;
const WARMUP_ROUNDS = 1;
/** Timed rounds of the write test (each writes 80 MiB and syncs it, per side). */
const WRITE_ROUNDS = 7;
/** Writes per slice in the overlap-check comparison: tens of milliseconds, so noise lands on both sides alike. */
const OVERLAP_SLICE = 1000;
/** Timed rounds of each read test (tens of milliseconds each, so more of them). */
const READ_ROUNDS = 21;

/** How one side of a comparison opens its disk. */
interface Side {
  name: string;
  format: "raw" | "qcow2";
  wrap?: (disk: Disk) => Disk;
}

/** Rounds of `measure` over `sides`, in alternating order; per side, the per-round results of the timed rounds. */
function rounds(sides: readonly Side[], count: number, label: string, progress: Progress, measure: (side: Side) => number): Map<string, number[]> {
  const results = new Map<string, number[]>(sides.map((s) => [s.name, []]));
  for (let round = 0; round < WARMUP_ROUNDS + count; round++) {
    progress(`${label}, round ${round + 1}/${WARMUP_ROUNDS + count}`);
    const order = round % 2 === 0 ? sides : [...sides].reverse();
    for (const side of order) {
      const value = measure(side);
      if (round >= WARMUP_ROUNDS) results.get(side.name)!.push(value);
    }
  }
  return results;
}

/** The median over rounds of `a[i] / b[i]`. */
function medianRatio(a: readonly number[], b: readonly number[]): number {
  return median(a.map((x, i) => x / b[i]));
}

/** The random-write workload: offsets and bytes, the same on every side and run. */
interface Workload {
  offsets: Float64Array;
  data: Uint8Array;
}

function randomWorkload(): Workload {
  const random = seededRandom(0xd15c);
  const blocks = RANDWRITE_DISK / RANDWRITE_BYTES;
  const offsets = Float64Array.from({ length: RANDWRITE_COUNT }, () => Math.floor(random() * blocks) * RANDWRITE_BYTES);
  const data = Uint8Array.from({ length: RANDWRITE_BYTES }, () => Math.floor(random() * 256));
  return { offsets, data };
}

function randomWrites(dir: string, progress: Progress, { offsets, data }: Workload): Record<string, number> {
  const sides: Side[] = [
    { name: "qcow2", format: "qcow2" },
    { name: "raw", format: "raw" },
    { name: "tracked_raw", format: "raw", wrap: (disk) => new TrackedDisk(disk) },
  ];
  let serial = 0;
  const iops = rounds(sides, WRITE_ROUNDS, "4 KiB random writes", progress, (side) => {
    const path = join(dir, `randwrite-${serial++}.${side.format}`);
    createImage(path, side.format, { size: RANDWRITE_DISK });
    const opened = openDisk(path, { format: side.format });
    const disk = side.wrap ? side.wrap(opened) : opened;
    const start = performance.now();
    for (const offset of offsets) disk.write(offset, data);
    disk.flush();
    const seconds = (performance.now() - start) / 1000;
    disk.close();
    rmSync(path);
    return RANDWRITE_COUNT / seconds;
  });
  const q = iops.get("qcow2")!;
  const r = iops.get("raw")!;
  const t = iops.get("tracked_raw")!;
  return {
    qcow2_randwrite_vs_raw: medianRatio(q, r),
    qcow2_randwrite_iops: median([...q]),
    raw_randwrite_iops: median([...r]),
    tracked_raw_randwrite_vs_raw: medianRatio(t, r),
  };
}

/**
 * What the overlap checks cost. Rounds of the randwrite test's writes would put this machine's
 * noise (other processes, writeback of the other side's file) on one side or the other, and it
 * is larger than the cost; so two fresh qcow2 images, one checked and one not, are written in the
 * same loop, a slice of writes at a time in alternating order, then flushed in alternating order.
 * Each side's time is the sum of its slices and its flush; the ratio is the median over rounds.
 */
function overlapCheckCost(dir: string, progress: Progress, { offsets, data }: Workload): Record<string, number> {
  const ratios: number[] = [];
  for (let round = 0; round < WARMUP_ROUNDS + WRITE_ROUNDS; round++) {
    progress(`4 KiB random writes with and without overlap checks, round ${round + 1}/${WARMUP_ROUNDS + WRITE_ROUNDS}`);
    const sides = [true, false].map((overlapChecks) => {
      const path = join(dir, `overlap-${round}-${overlapChecks}.qcow2`);
      createImage(path, "qcow2", { size: RANDWRITE_DISK });
      return { path, disk: openDisk(path, { format: "qcow2", overlapChecks }), ms: 0 };
    });
    const timed = (side: (typeof sides)[number], work: () => void): void => {
      const start = performance.now();
      work();
      side.ms += performance.now() - start;
    };
    for (let from = 0, slice = round; from < offsets.length; from += OVERLAP_SLICE, slice++) {
      const to = Math.min(from + OVERLAP_SLICE, offsets.length);
      for (const side of slice % 2 === 0 ? sides : [...sides].reverse()) {
        timed(side, () => {
          for (let i = from; i < to; i++) side.disk.write(offsets[i], data);
        });
      }
    }
    for (const side of round % 2 === 0 ? sides : [...sides].reverse()) timed(side, () => side.disk.flush());
    for (const side of sides) {
      side.disk.close();
      rmSync(side.path);
    }
    // Rates are writes per time, so checked / unchecked is the unchecked side's time over the checked one's.
    if (round >= WARMUP_ROUNDS) ratios.push(sides[1].ms / sides[0].ms);
  }
  return { qcow2_randwrite_vs_unchecked: median(ratios) };
}

function sequentialReads(dir: string, progress: Progress): Record<string, number> {
  const sides: Side[] = [
    { name: "qcow2", format: "qcow2" },
    { name: "raw", format: "raw" },
  ];
  const random = seededRandom(0x5e9);
  const chunk = Uint8Array.from({ length: MiB }, () => Math.floor(random() * 256));
  const disks = new Map<string, Disk>();
  for (const side of sides) {
    progress(`writing the ${SEQREAD_DISK / MiB} MiB ${side.format} image`);
    const path = join(dir, `seqread.${side.format}`);
    createImage(path, side.format, { size: SEQREAD_DISK });
    const disk = openDisk(path, { format: side.format });
    for (let at = 0; at < SEQREAD_DISK; at += MiB) {
      chunk[0] = at / MiB; // no two megabytes alike
      disk.write(at, chunk);
    }
    disk.flush();
    disks.set(side.name, disk);
  }
  const readAll = (disk: Disk, request: number, span: number): number => {
    const target = new Uint8Array(request);
    const start = performance.now();
    for (let at = 0; at < span; at += request) disk.readInto(at, target);
    return span / MiB / ((performance.now() - start) / 1000);
  };
  const large = rounds(sides, READ_ROUNDS, "64 KiB sequential reads", progress, (side) => readAll(disks.get(side.name)!, SEQREAD_REQUEST, SEQREAD_DISK));
  const small = rounds(sides, READ_ROUNDS, "4 KiB sequential reads", progress, (side) => readAll(disks.get(side.name)!, SEQREAD_SMALL_REQUEST, SEQREAD_SMALL_SPAN));
  const first = disks.get("qcow2")!.read(0, MiB);
  const same = disks.get("raw")!.read(0, MiB).every((b, i) => b === first[i]);
  for (const disk of disks.values()) disk.close();
  if (!same) throw new Error("bench disk: the qcow2 and raw images read back different bytes");
  return {
    qcow2_seqread_vs_raw: medianRatio(large.get("qcow2")!, large.get("raw")!),
    qcow2_seqread_mbps: median([...large.get("qcow2")!]),
    raw_seqread_mbps: median([...large.get("raw")!]),
    qcow2_seqread_4k_vs_raw: medianRatio(small.get("qcow2")!, small.get("raw")!),
    qcow2_seqread_4k_mbps: median([...small.get("qcow2")!]),
    raw_seqread_4k_mbps: median([...small.get("raw")!]),
  };
}

/** The disk suite; fails at once, saying so, if the qcow2 format is not registered. */
export function runDiskSuite(progress: Progress): Record<string, number> {
  if (!formatNames().includes("qcow2")) {
    throw new Error(`bench disk: the qcow2 format is not registered (registered: ${formatNames().join(", ")}); it compares qcow2 with raw`);
  }
  const dir = mkdtempSync(join(tmpdir(), "tandem-bench-disk-"));
  try {
    const workload = randomWorkload();
    return { ...randomWrites(dir, progress, workload), ...overlapCheckCost(dir, progress, workload), ...sequentialReads(dir, progress) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
