/** Plain-TypeScript twin of assembly/delta.ts (see it for the format). */

import type { Heap } from "../heap.ts";

/** What delta_encode returns when the delta would pass its limit. */
export const DELTA_TOO_LARGE = 0xffffffff;

/** Encodes `next` against `prev` (both `size` bytes) into `out`; see assembly/delta.ts. */
export function deltaEncode(heap: Heap, prev: number, next: number, size: number, out: number, limit: number): number {
  const u8 = heap.u8;
  const w = heap.u32;
  const aligned = ((prev | next) & 3) === 0;
  let o = 0;
  let i = 0;
  let runStart = 0;
  while (i < size) {
    if (aligned) {
      // Skip equal bytes a word at a time while both sides are word-aligned.
      while ((i & 3) === 0 && i + 4 <= size && w[(prev + i) >>> 2] === w[(next + i) >>> 2]) i += 4;
    }
    while (i < size && u8[prev + i] === u8[next + i]) i++;
    if (i >= size) break;
    const start = i++;
    while (i < size && u8[prev + i] !== u8[next + i]) i++;
    const zrun = start - runStart;
    const nzrun = i - start;
    if (o + ulebSize(zrun) + ulebSize(nzrun) + nzrun > limit) return DELTA_TOO_LARGE;
    o = putUleb(u8, out, o, zrun);
    o = putUleb(u8, out, o, nzrun);
    u8.copyWithin(out + o, next + start, next + i);
    o += nzrun;
    runStart = i;
  }
  return o;
}

/** Applies a delta in place; 0 on success, 1 if malformed. See assembly/delta.ts. */
export function deltaDecode(heap: Heap, page: number, size: number, delta: number, len: number): number {
  const u8 = heap.u8;
  let d = 0;
  let p = 0;
  const uleb = (): number => {
    let value = 0;
    for (let shift = 0; ; shift += 7) {
      if (d >= len || shift > 14) return -1;
      const byte = u8[delta + d++];
      value |= (byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return value;
    }
  };
  while (d < len) {
    const zrun = uleb();
    if (zrun < 0 || zrun > size - p) return 1;
    p += zrun;
    const nzrun = uleb();
    if (nzrun < 0 || nzrun > size - p || nzrun > len - d) return 1;
    u8.copyWithin(page + p, delta + d, delta + d + nzrun);
    p += nzrun;
    d += nzrun;
  }
  return 0;
}

function ulebSize(v: number): number {
  return v < 0x80 ? 1 : v < 0x4000 ? 2 : v < 0x200000 ? 3 : v < 0x10000000 ? 4 : 5;
}

function putUleb(u8: Uint8Array, out: number, o: number, v: number): number {
  while (v >= 0x80) {
    u8[out + o++] = (v & 0x7f) | 0x80;
    v >>>= 7;
  }
  u8[out + o++] = v;
  return o;
}
