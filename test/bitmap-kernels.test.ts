import { suite } from "uvu";
import * as assert from "uvu/assert";
import { seededRandom } from "../host/prng.ts";
import { SCAN_SLACK } from "../host/wasm/kernels.ts";
import { agree } from "./support/flavors.ts";

const test = suite("bitmap kernels: every flavor equals the twin, the twin equals a naive oracle");

// Bit counts around word edges (63/64/65), a u32 half (32), odd sizes and a 4 GiB guest's map.
const SIZES = [1, 2, 31, 32, 33, 63, 64, 65, 127, 128, 129, 511, 512, 513, 1000, 4097, 100_003];
const MAP = 64; // maps start off zero to catch code that assumes a base of 0

function mapBytes(bits: number): number {
  return Math.ceil(bits / 64) * 8;
}

/** A memory image: [MAP, MAP+map) bitmap, then room for the scan's output plus slack. */
function image(bits: number, fill: (bytes: Uint8Array) => void): { bytes: Uint8Array; out: number } {
  const out = MAP + mapBytes(bits) + 64;
  const bytes = new Uint8Array(out + (bits + SCAN_SLACK) * 4 + 64);
  fill(bytes.subarray(MAP, MAP + mapBytes(bits)));
  return { bytes, out };
}

/** Set bits of the map per the naive reading: byte i >> 3, bit i & 7 (little-endian words). */
function naiveBits(bytes: Uint8Array, bits: number): number[] {
  const set: number[] = [];
  for (let i = 0; i < bits; i++) if ((bytes[MAP + (i >> 3)] >> (i & 7)) & 1) set.push(i);
  return set;
}

function randomFill(random: () => number, density: number): (bytes: Uint8Array) => void {
  return (bytes) => {
    for (let i = 0; i < bytes.length * 8; i++) if (random() < density) bytes[i >> 3] |= 1 << (i & 7);
  };
}

test("mark sets exactly [first, end) for edge and random ranges", () => {
  const random = seededRandom(11);
  for (const bits of SIZES) {
    const ranges: [number, number][] = [
      [0, bits], [0, 1], [bits - 1, bits], [0, 0], [bits, bits], [Math.min(5, bits), Math.min(3, bits)],
      [Math.min(63, bits - 1), Math.min(65, bits)], [Math.min(64, bits - 1), bits],
    ];
    for (let i = 0; i < 20; i++) {
      const a = Math.floor(random() * (bits + 1));
      const b = Math.floor(random() * (bits + 1));
      ranges.push([Math.min(a, b), Math.max(a, b)]);
    }
    for (const [first, end] of ranges) {
      const { bytes } = image(bits, () => {});
      const { heap } = agree(bytes, (k) => k.bitmapMark(MAP, first, end), `mark ${first}..${end} of ${bits}`);
      const want = [];
      for (let i = first; i < end; i++) want.push(i);
      assert.equal(naiveBits(heap.u8, bits), want, `mark ${first}..${end} of ${bits}`);
    }
  }
});

test("mark ORs into a map that already has bits", () => {
  const random = seededRandom(12);
  const bits = 300;
  const { bytes } = image(bits, randomFill(random, 0.2));
  const before = new Set(naiveBits(bytes, bits));
  const { heap } = agree(bytes, (k) => k.bitmapMark(MAP, 70, 200), "mark over existing bits");
  for (let i = 70; i < 200; i++) before.add(i);
  assert.equal(naiveBits(heap.u8, bits), [...before].sort((a, b) => a - b));
});

test("count, scan and scan-clear agree on random maps of many densities", () => {
  const random = seededRandom(13);
  for (const bits of SIZES) {
    for (const density of [0, 0.001, 0.01, 0.3, 0.97, 1]) {
      const { bytes, out } = image(bits, randomFill(random, density));
      const want = naiveBits(bytes, bits);
      const label = `${bits} bits at density ${density}`;
      const count = agree(bytes, (k) => k.bitmapCount(MAP, bits), `count ${label}`).result;
      assert.is(count, want.length, `count ${label}`);
      const listed = (heap: { u32: Uint32Array }, n: number) => Array.from(heap.u32.subarray(out >>> 2, (out >>> 2) + n));
      const scan = agree(bytes, (k, heap) => listed(heap, k.bitmapScan(MAP, bits, out)), `scan ${label}`, { from: 0, to: out });
      assert.equal(scan.result, want, `scan ${label}`);
      const cleared = agree(bytes, (k, heap) => listed(heap, k.bitmapScanClear(MAP, bits, out)), `scan-clear ${label}`, { from: 0, to: out });
      assert.equal(cleared.result, want, `scan-clear ${label}`);
      assert.equal(naiveBits(cleared.heap.u8, bits), [], `scan-clear leaves nothing set, ${label}`);
    }
  }
});

test("bits past the map's end in its last word are ignored by count and scan", () => {
  for (const bits of [1, 33, 63, 65, 100, 129]) {
    // Every bit of every word set, including the ones past `bits`.
    const { bytes, out } = image(bits, (map) => map.fill(0xff));
    assert.is(agree(bytes, (k) => k.bitmapCount(MAP, bits), `count ${bits}`).result, bits);
    const n = agree(bytes, (k) => k.bitmapScan(MAP, bits, out), `scan ${bits}`, { from: 0, to: out }).result;
    assert.is(n, bits, `scan of a full ${bits}-bit map`);
  }
});

test("clustered maps (runs of dirty pages, long clean stretches)", () => {
  const bits = 70_000;
  for (let trial = 0; trial < 5; trial++) {
    const { bytes, out } = image(bits, () => {});
    const { heap } = agree(bytes, (k) => {
      const r = seededRandom(100 + trial);
      for (let i = 0; i < 30; i++) {
        const first = Math.floor(r() * bits);
        k.bitmapMark(MAP, first, Math.min(bits, first + 1 + Math.floor(r() * 2000)));
      }
    }, "clustered marks");
    const marked = heap.u8.slice();
    const want = naiveBits(marked, bits);
    const listed = agree(marked, (k, h) => {
      const n = k.bitmapScanClear(MAP, bits, out);
      return Array.from(h.u32.subarray(out >>> 2, (out >>> 2) + n));
    }, "clustered scan-clear", { from: 0, to: out }).result;
    assert.equal(listed, want);
  }
});

test("scan writes at most SCAN_SLACK entries past its count, never further", () => {
  for (const bits of [1, 64, 65, 1000]) {
    for (const fill of [0x00, 0xff, 0x01]) {
      const { bytes, out } = image(bits, (map) => map.fill(fill));
      const guard = out + (bits + SCAN_SLACK) * 4;
      bytes.fill(0xa5, guard);
      const { heap } = agree(bytes, (k) => k.bitmapScan(MAP, bits, out), `slack ${bits}/${fill}`, { from: 0, to: out });
      assert.ok(heap.u8.subarray(guard, bytes.length).every((b) => b === 0xa5), `guard bytes after ${bits}-bit scan stay intact`);
    }
  }
});

test.run();
