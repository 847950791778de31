/**
 * `npm run bench -- memory`: the dirty-page kernels, Wasm (SIMD and scalar) against the
 * TypeScript twin and, for page comparison, against native memcmp (Buffer.compare).
 *
 * bitmap:  scan-and-clear of a 1,048,576-page bitmap (a 4 GiB guest), 1% of bits set at random.
 *          Before each sample the bitmap is restored, untimed; a sample is one scan (tens of
 *          microseconds, far above the ~0.2 us timer resolution of all three runtimes).
 * compare: a detecting dirty log's collect over a 256 MiB guest in a Wasm memory with exactly
 *          1% of pages changed since that log's last collect (changed pages are also copied
 *          to the shadow, by every contender). GB/s is guest bytes examined per second.
 * zero:    zero-page detection over every page of a 64 MiB guest, half its pages zero.
 */

import { Buffer } from "node:buffer";
import { DetectingDirtyLog } from "../host/memory/detecting-dirty-log.ts";
import { GuestMemory, PAGE_SIZE } from "../host/memory/guest-memory.ts";
import { ZeroPageFinder } from "../host/memory/zero-pages.ts";
import { Heap } from "../host/wasm/heap.ts";
import { SCAN_SLACK, kernelsFor, type KernelFlavor } from "../host/wasm/kernels.ts";
import { seededRandom } from "../host/prng.ts";
import { race, type Contender } from "./timing.ts";

/** Progress callback: one line of text, shown on a terminal only. */
export type Progress = (message: string) => void;

const WASM_FLAVORS: KernelFlavor[] = ["simd", "scalar"];
const FLAVORS: KernelFlavor[] = ["simd", "scalar", "ts"];

function bitmapScan(progress: Progress): Record<string, number> {
  const pages = 1 << 20;
  const mapBytes = pages / 8;
  const outBytes = (pages + SCAN_SLACK) * 4;
  const heap = Heap.create(2 * mapBytes + outBytes + 4096);
  const pattern = heap.alloc(mapBytes);
  const map = heap.alloc(mapBytes);
  const out = heap.alloc(outBytes);
  const random = seededRandom(1);
  const bits = heap.u8.subarray(pattern, pattern + mapBytes);
  for (let i = 0; i < pages / 100; i++) {
    const page = Math.floor(random() * pages);
    bits[page >>> 3] |= 1 << (page & 7);
  }
  const restore = () => void heap.u8.copyWithin(map, pattern, pattern + mapBytes);
  const contenders: Contender[] = FLAVORS.map((flavor) => {
    const k = kernelsFor(heap, flavor);
    return { name: flavor, setup: restore, run: () => void k.bitmapScanClear(map, pages, out) };
  });
  const rounds = { warmup: 50, rounds: 301 };
  const ms = race(contenders, { ...rounds, onRound: (r) => progress(`bitmap scan, round ${r + 1}/${rounds.warmup + rounds.rounds}`) });
  return {
    bitmap_scan_ms_wasm: ms.simd,
    bitmap_scan_ms_wasm_scalar: ms.scalar,
    bitmap_scan_ms_ts: ms.ts,
    bitmap_scan_speedup_vs_ts: ms.ts / ms.simd,
  };
}

function compare(progress: Progress): Record<string, number> {
  const size = 256 << 20;
  const pages = size / PAGE_SIZE;
  const memory = new WebAssembly.Memory({ initial: size / 65536 });
  const guest = new GuestMemory(memory, { size });
  const random = seededRandom(2);
  const ram = guest.bytes();
  for (let i = 0; i < size; i += 64) ram[i] = random() * 256;

  const logs = FLAVORS.map((flavor) => {
    const log = new DetectingDirtyLog(guest, { kernels: flavor });
    log.arm();
    log.collect();
    return log;
  });
  // Native: memcmp through Buffer.compare, one call per page, over Buffers made once.
  const shadow = Buffer.alloc(size);
  shadow.set(guest.bytes());
  const ramPages: Buffer[] = [];
  const shadowPages: Buffer[] = [];
  for (let i = 0; i < pages; i++) {
    ramPages.push(Buffer.from(memory.buffer, i * PAGE_SIZE, PAGE_SIZE));
    shadowPages.push(shadow.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE));
  }
  const native = (): number => {
    let n = 0;
    for (let i = 0; i < pages; i++) {
      if (Buffer.compare(ramPages[i], shadowPages[i]) !== 0) {
        shadowPages[i].set(ramPages[i]);
        n++;
      }
    }
    return n;
  };
  // Exactly 1% of pages, distinct, each changed in one byte at a random place in the page.
  const changes = Math.floor(pages / 100);
  const dirty = () => {
    const bytes = guest.bytes();
    const chosen = new Set<number>();
    while (chosen.size < changes) chosen.add(Math.floor(random() * pages));
    for (const page of chosen) {
      const at = page * PAGE_SIZE + Math.floor(random() * PAGE_SIZE);
      bytes[at] = (bytes[at] + 1) & 0xff;
    }
  };
  // Each contender keeps its own shadow, so before each sample it catches up untimed with
  // what the others changed; then exactly 1% of pages change, and only the next pass is timed.
  const found = new Map<string, number[]>();
  const record = (name: string, n: number) => found.set(name, [...(found.get(name) ?? []), n]);
  const contenders: Contender[] = logs.map((log) => ({
    name: log.flavor,
    setup: () => { log.collect(); dirty(); },
    run: () => record(log.flavor, log.collect().length),
  }));
  contenders.push({ name: "native", setup: () => { native(); dirty(); }, run: () => record("native", native()) });
  const ms = race(contenders, { warmup: 3, rounds: 15, onRound: (r) => progress(`page compare, round ${r + 1}/18`) });
  for (const [name, counts] of found) {
    if (counts.some((n) => n !== changes)) {
      throw new Error(`compare bench: ${name} found ${counts.join(",")} changed pages, expected ${changes} each time`);
    }
  }
  const gbps = (name: string) => size / 1e9 / (ms[name] / 1000);
  return {
    compare_gbps_wasm: gbps("simd"),
    compare_gbps_wasm_scalar: gbps("scalar"),
    compare_gbps_ts: gbps("ts"),
    compare_gbps_native: gbps("native"),
    compare_vs_native: gbps("simd") / gbps("native"),
    compare_changed_pages_per_sample: changes,
  };
}

function zero(progress: Progress): Record<string, number> {
  const size = 64 << 20;
  const memory = new WebAssembly.Memory({ initial: size / 65536 });
  const guest = new GuestMemory(memory, { size });
  const bytes = guest.bytes();
  for (let p = 0; p < guest.pageCount; p += 2) bytes[p * PAGE_SIZE + PAGE_SIZE - 1] = 1;
  const all = Uint32Array.from({ length: guest.pageCount }, (_, i) => i);
  const contenders: Contender[] = FLAVORS.map((flavor) => {
    const finder = new ZeroPageFinder(guest, { kernels: flavor });
    return { name: flavor, run: () => void finder.find(all) };
  });
  const ms = race(contenders, { warmup: 5, rounds: 15, onRound: (r) => progress(`zero pages, round ${r + 1}/20`) });
  const gbps = (name: string) => size / 1e9 / (ms[name] / 1000);
  return { zero_gbps_wasm: gbps("simd"), zero_gbps_wasm_scalar: gbps("scalar"), zero_gbps_ts: gbps("ts") };
}

/** Runs the memory suite; returns its metrics. */
export function runMemorySuite(progress: Progress): Record<string, number> {
  for (const flavor of WASM_FLAVORS) kernelsFor(Heap.create(0), flavor);
  return { ...bitmapScan(progress), ...compare(progress), ...zero(progress) };
}
