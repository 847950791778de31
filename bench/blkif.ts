/**
 * `npm run bench -- blkif`: parsing and checking full rings of Xen block requests, the Wasm
 * kernels (SIMD and scalar) against the TypeScript twin, side by side in one run.
 *
 * The ring: 16 pages (512 slots), x86_64 layout, filled once with valid reads and writes of
 * 1 to 11 segments at random sectors of a 1 TiB disk, as a busy frontend leaves it. A sample is
 * 64 parses of the whole ring (32,768 requests) by one contender, all from the same req_cons,
 * so every sample does identical work.
 *
 * blkif_randread_iops: 4 KiB reads at random 4 KiB-aligned offsets of a 64 MiB raw file, through
 * the whole stack in one process: a XenBlockFrontend posting up to 32 requests at once on a
 * 1-page ring, the xen-block device's dataplane (ring copy, Wasm parse, grant copy, Disk read),
 * responses and event channels. Median of several timed runs of a fixed count of reads.
 */

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createImage, openDisk } from "../host/disk/registry.ts";
import { seededRandom } from "../host/prng.ts";
import { EventChannels } from "../host/xen/event-channel.ts";
import { GrantTable } from "../host/xen/grants/grant-table.ts";
import { XenBlockFrontend } from "../host/xen/block/frontend.ts";
import { XenBlockDevice } from "../host/xen/block/xen-block-device.ts";
import { createDevice } from "../host/xen/xenbus/toolstack.ts";
import { XenStore } from "../host/xen/xenstore/store.ts";
import { Heap } from "../host/wasm/heap.ts";
import type { KernelFlavor } from "../host/wasm/kernels.ts";
import { BlkifAbi, BlkifOp, RING_PAGE_SIZE, SRING_HEADER_SIZE, SRING_REQ_PROD, X86_64_LAYOUT } from "../host/xen/blkif/ring-layout.ts";
import { BlkifRequestParser, RECORD_SIZE } from "../host/xen/blkif/request-parser.ts";
import type { Progress } from "./memory.ts";
import { race, type Contender } from "./timing.ts";

const FLAVORS: KernelFlavor[] = ["simd", "scalar", "ts"];
const PAGES = 16;
const PASSES = 64;
const DISK_SECTORS = 2 ** 31; // 1 TiB

function fillRing(heap: Heap, ring: number, entries: number): void {
  const random = seededRandom(7);
  const view = new DataView(heap.memory.buffer);
  const l = X86_64_LAYOUT;
  for (let i = 0; i < entries; i++) {
    const at = ring + SRING_HEADER_SIZE + i * l.entrySize;
    const segments = 1 + Math.floor(random() * 11);
    view.setUint8(at + l.operation, random() < 0.7 ? BlkifOp.Read : BlkifOp.Write);
    view.setUint8(at + l.nrSegments, segments);
    view.setUint16(at + l.handle, 51712, true);
    view.setBigUint64(at + l.id, BigInt(i), true);
    view.setBigUint64(at + l.sectorNumber, BigInt(Math.floor(random() * (DISK_SECTORS - 88))), true);
    for (let s = 0; s < segments; s++) {
      const first = Math.floor(random() * 8);
      view.setUint32(at + l.segments + 8 * s, 8 + i * 11 + s, true);
      view.setUint8(at + l.segments + 8 * s + 4, first);
      view.setUint8(at + l.segments + 8 * s + 5, first + Math.floor(random() * (8 - first)));
    }
  }
  view.setUint32(ring + SRING_REQ_PROD, entries, true);
}

const RANDREAD_FILE_BYTES = 64 << 20;
const RANDREAD_DEPTH = 32;
const RANDREAD_COUNT = 20_000;
const RANDREAD_RUNS = 5;

/** 4 KiB random reads through a connected frontend and xen-block device: reads per second (median of runs). */
async function randreadIops(progress: Progress): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), "tandem-bench-blkif-"));
  try {
    const path = join(dir, "disk.raw");
    createImage(path, "raw", { size: RANDREAD_FILE_BYTES });
    const disk = openDisk(path);
    const store = new XenStore();
    const dom0 = store.connect(0);
    const guest = 1;
    const id = { type: "vbd", backendDomid: 0, frontendDomid: guest, devid: 51712 };
    dom0.mkdir(`/local/domain/${guest}`);
    dom0.setPerms(`/local/domain/${guest}`, [{ domid: guest, access: "n" }]);
    createDevice(dom0, id);
    const frames = 16 + RANDREAD_DEPTH + 16;
    const memory = new Uint8Array(frames * 4096);
    const grants = new GrantTable({ domid: guest, memory });
    const channels = new EventChannels();
    const device = new XenBlockDevice({ store: dom0, frontendDomid: guest, devid: 51712, disk, grants, channels });
    await device.realize();
    const frontend = new XenBlockFrontend({ store: store.connect(guest), devid: 51712, grants, memory, channels, frames: { first: 0, count: frames }, ringPageOrder: 0 });
    frontend.start();
    await frontend.connected();
    const random = seededRandom(11);
    const blocks = RANDREAD_FILE_BYTES / 4096;
    const run = async (count: number): Promise<number> => {
      let issued = 0;
      const worker = async () => {
        while (issued < count) {
          issued++;
          const result = await frontend.read(BigInt(Math.floor(random() * blocks) * 8), 8);
          if (result.status !== 0) throw new Error(`blkif bench: a random read answered status ${result.status}`);
        }
      };
      const start = performance.now();
      await Promise.all(Array.from({ length: RANDREAD_DEPTH }, worker));
      return count / ((performance.now() - start) / 1000);
    };
    await run(RANDREAD_COUNT / 4);
    const samples: number[] = [];
    for (let r = 0; r < RANDREAD_RUNS; r++) {
      progress(`random reads, run ${r + 1}/${RANDREAD_RUNS}`);
      samples.push(await run(RANDREAD_COUNT));
    }
    device.destroy();
    frontend.xenbus.stop();
    disk.close();
    samples.sort((a, b) => a - b);
    return samples[Math.floor(samples.length / 2)];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Runs the blkif suite; returns its metrics. */
export async function runBlkifSuite(progress: Progress): Promise<Record<string, number>> {
  const heap = Heap.create(PAGES * RING_PAGE_SIZE + FLAVORS.length * (512 * RECORD_SIZE + 4096) + 65536);
  const ring = heap.alloc(PAGES * RING_PAGE_SIZE, RING_PAGE_SIZE);
  const parsers = FLAVORS.map((flavor) =>
    new BlkifRequestParser(heap, { ring, pages: PAGES, abi: BlkifAbi.X86_64, kernels: flavor }, { sectors: DISK_SECTORS, readOnly: false }));
  const entries = parsers[0].entries;
  fillRing(heap, ring, entries);
  for (const parser of parsers) {
    const result = parser.parse(0, 0);
    if (result.count !== entries || parser.request(entries - 1).status !== 0) {
      throw new Error(`blkif bench: a full ring of valid requests parsed to ${result.count} records, the last with status ${parser.request(entries - 1).status}`);
    }
  }
  const contenders: Contender[] = parsers.map((parser, i) => ({
    name: FLAVORS[i],
    run: () => {
      for (let p = 0; p < PASSES; p++) parser.parse(0, 0);
    },
  }));
  const rounds = { warmup: 20, rounds: 101 };
  const ms = race(contenders, { ...rounds, onRound: (r) => progress(`ring parse, round ${r + 1}/${rounds.warmup + rounds.rounds}`) });
  const requests = PASSES * entries;
  const mreq = (flavor: KernelFlavor) => requests / 1e6 / (ms[flavor] / 1000);
  return {
    ring_parse_speedup_vs_ts: ms.ts / ms.simd,
    ring_parse_mreq_per_s: mreq("simd"),
    ring_parse_mreq_per_s_wasm_scalar: mreq("scalar"),
    ring_parse_mreq_per_s_ts: mreq("ts"),
    ring_parse_ms_wasm: ms.simd,
    ring_parse_ms_wasm_scalar: ms.scalar,
    ring_parse_ms_ts: ms.ts,
    ring_parse_requests_per_sample: requests,
    blkif_randread_iops: await randreadIops(progress),
  };
}
