/**
 * `tandem selftest`: loads every kernel flavor, runs each on a small known-answer case, and
 * reports which loaded, which passed, and which one tandem will use (with SIMD or not).
 */

import { KERNEL_FLAVORS, SCAN_SLACK, defaultFlavor, kernelsFor, type KernelFlavor } from "../wasm/kernels.ts";
import { Heap } from "../wasm/heap.ts";
import { simdSupported } from "../wasm/loader.ts";
import { runtimeName, runtimeVersion, type RuntimeName } from "../runtime/runtime.ts";

/** What the self-test found for one flavor. */
export interface FlavorReport {
  flavor: KernelFlavor;
  loaded: boolean;
  passed: boolean;
  error?: string;
}

/** The whole self-test result. */
export interface SelftestReport {
  runtime: RuntimeName;
  runtimeVersion: string;
  simdSupported: boolean;
  /** The flavor tandem uses by default here. */
  selected: KernelFlavor;
  /** Whether the selected flavor uses Wasm SIMD. */
  simdInUse: boolean;
  flavors: FlavorReport[];
  ok: boolean;
}

const PAGES = 200; // not a multiple of 64: exercises the partial last bitmap word
const PAGE = 4096;

/** Marks, scans, compares and zero-checks a small guest; throws on any wrong answer. */
function knownAnswer(flavor: KernelFlavor): void {
  const heap = Heap.create(2 * PAGES * PAGE + 3 * PAGES * 4 + 4096);
  const k = kernelsFor(heap, flavor);
  const map = heap.alloc(Math.ceil(PAGES / 64) * 8);
  const out = heap.alloc((PAGES + SCAN_SLACK) * 4);
  k.bitmapMark(map, 3, 5);
  k.bitmapMark(map, 63, 66);
  k.bitmapMark(map, 199, 200);
  expect(k.bitmapCount(map, PAGES), 6, "bitmap count");
  const n = k.bitmapScanClear(map, PAGES, out);
  expect(Array.from(heap.u32.subarray(out >>> 2, (out >>> 2) + n)).join(), "3,4,63,64,65,199", "bitmap scan");
  expect(k.bitmapCount(map, PAGES), 0, "bitmap clear");

  const ram = heap.alloc(PAGES * PAGE, PAGE);
  const shadow = heap.alloc(PAGES * PAGE, PAGE);
  heap.u8[ram + 7 * PAGE + 4095] = 1;
  heap.u8[ram + 150 * PAGE] = 9;
  const changed = k.pagesCompareCopy(ram, shadow, PAGES, out);
  expect(Array.from(heap.u32.subarray(out >>> 2, (out >>> 2) + changed)).join(), "7,150", "page compare");
  expect(k.pagesCompare(ram, shadow, PAGES, out), 0, "shadow update");

  const list = heap.alloc(3 * 4);
  heap.u32.set([7, 8, 150], list >>> 2);
  const zeros = k.pagesZero(ram, PAGES, list, 3, out);
  expect(zeros === 1 ? heap.u32[out >>> 2] : -1, 8, "zero pages");
}

function expect<T>(got: T, want: T, what: string): void {
  if (got !== want) throw new Error(`${what}: got ${String(got)}, expected ${String(want)}`);
}

/** Runs the self-test. */
export function selftest(): SelftestReport {
  const flavors = KERNEL_FLAVORS.map((flavor): FlavorReport => {
    let loaded = false;
    try {
      kernelsFor(Heap.create(0), flavor);
      loaded = true;
      knownAnswer(flavor);
      return { flavor, loaded, passed: true };
    } catch (error) {
      return { flavor, loaded, passed: false, error: (error as Error).message };
    }
  });
  const selected = defaultFlavor();
  return {
    runtime: runtimeName(),
    runtimeVersion: runtimeVersion(),
    simdSupported: simdSupported(),
    selected,
    simdInUse: selected === "simd",
    flavors,
    // SIMD may be missing on some runtime; what must hold is that the selected flavor works.
    ok: flavors.every((f) => f.passed || (f.flavor === "simd" && !simdSupported())) &&
      flavors.some((f) => f.flavor === selected && f.passed),
  };
}

/** The report as lines for a terminal. */
export function formatSelftest(report: SelftestReport): string {
  const lines = [`runtime   ${report.runtime} ${report.runtimeVersion}`];
  for (const f of report.flavors) {
    const status = !f.loaded ? "not loaded" : f.passed ? "ok" : "FAILED";
    const mark = f.flavor === report.selected ? "  (in use)" : "";
    lines.push(`kernels   ${f.flavor.padEnd(7)}${status}${mark}${f.error ? `: ${f.error}` : ""}`);
  }
  lines.push(`simd      ${report.simdInUse ? "in use" : report.simdSupported ? "supported, not in use" : "not supported"}`);
  lines.push(report.ok ? "selftest passed" : "selftest FAILED");
  return lines.join("\n");
}
