/**
 * `npm run bench -- blkif`: parsing and checking full rings of Xen block requests, the Wasm
 * kernels (SIMD and scalar) against the TypeScript twin, side by side in one run.
 *
 * The ring: 16 pages (512 slots), x86_64 layout, filled once with valid reads and writes of
 * 1 to 11 segments at random sectors of a 1 TiB disk, as a busy frontend leaves it. A sample is
 * 64 parses of the whole ring (32,768 requests) by one contender, all from the same req_cons,
 * so every sample does identical work. (blkif_randread_iops, 4 KiB reads through the ring to a
 * raw file, needs the whole backend and is not measured here yet.)
 */

import { seededRandom } from "../host/prng.ts";
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

/** Runs the blkif suite; returns its metrics. */
export function runBlkifSuite(progress: Progress): Record<string, number> {
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
  };
}
