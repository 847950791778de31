/**
 * Plain-TypeScript twin of assembly/bitmap.ts: same pointers, same layout, same results.
 * It reads the map as u32 pairs (the low half of each little-endian u64 word first), so
 * `map` and `out` must be 4-byte aligned; tandem's arena aligns to 64.
 */

import type { Heap } from "../heap.ts";

/** Sets bits [first, end) of the map. */
export function bitmapMark(heap: Heap, map: number, first: number, end: number): void {
  if (first >= end) return;
  const words = heap.u32;
  const base = map >>> 2;
  const firstWord = base + (first >>> 5);
  const lastWord = base + ((end - 1) >>> 5);
  const head = (0xffffffff << (first & 31)) >>> 0;
  const tail = 0xffffffff >>> (31 - ((end - 1) & 31));
  if (firstWord === lastWord) {
    words[firstWord] |= head & tail;
    return;
  }
  words[firstWord] |= head;
  words.fill(0xffffffff, firstWord + 1, lastWord);
  words[lastWord] |= tail;
}

/** Number of set bits among the first `bits` bits of the map. */
export function bitmapCount(heap: Heap, map: number, bits: number): number {
  const words = heap.u32;
  const base = map >>> 2;
  const full = bits >>> 5;
  let n = 0;
  for (let i = 0; i < full; i++) n += popcount32(words[base + i]);
  const rest = bits & 31;
  if (rest !== 0) n += popcount32(words[base + full] & (0xffffffff >>> (32 - rest)));
  return n;
}

/** Writes the indices of set bits, ascending, as u32 at `out`; returns how many. */
export function bitmapScan(heap: Heap, map: number, bits: number, out: number): number {
  return scan(heap, map, bits, out, false);
}

/** As {@link bitmapScan}, and zeroes the words it read. */
export function bitmapScanClear(heap: Heap, map: number, bits: number, out: number): number {
  return scan(heap, map, bits, out, true);
}

function scan(heap: Heap, map: number, bits: number, out: number, clear: boolean): number {
  const words = heap.u32;
  const base = map >>> 2;
  const o = out >>> 2;
  // The map spans whole u64 words; bits past `bits` in them are not part of it.
  const count = ((bits + 63) >>> 6) * 2;
  let n = 0;
  for (let i = 0; i < count; i++) {
    let x = words[base + i];
    if (x === 0) continue;
    if (clear) words[base + i] = 0;
    const first = i << 5;
    if (first + 32 > bits) x = first >= bits ? 0 : x & (0xffffffff >>> (32 - (bits - first)));
    while (x !== 0) {
      const low = x & -x;
      words[o + n++] = first + 31 - Math.clz32(low);
      x ^= low;
    }
  }
  return n;
}

function popcount32(v: number): number {
  v = v - ((v >>> 1) & 0x55555555);
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (Math.imul((v + (v >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24);
}
