// Page deltas, in the spirit of QEMU's XBZRLE (docs/devel/migration/xbzrle.rst) and Remus's
// checkpoint compression: a page is sent as the runs where it differs from the copy the receiver
// already has. The format (little-endian ULEB128 lengths, as XBZRLE):
//
//   delta = ( zrun nzrun byte{nzrun} )*
//   zrun  = ULEB128   bytes equal to the receiver's copy (skipped)
//   nzrun = ULEB128   bytes that differ, followed by their NEW values (not the XOR: decoding is
//                     then a bounds-checked copy, and a corrupt delta cannot smear old data)
//
// Runs after the last difference are not encoded; an empty delta means "unchanged". nzrun is
// never 0 except in a final pair that a decoder accepts but an encoder never writes.

// @ts-ignore: decorator
@inline export const DELTA_TOO_LARGE: u32 = u32.MAX_VALUE;
// @ts-ignore: decorator
@inline const DECODE_OK: u32 = 0;
// @ts-ignore: decorator
@inline const DECODE_MALFORMED: u32 = 1;

/**
 * Encodes `size` bytes at `next` against `prev` into `out`; returns the delta's length, or
 * DELTA_TOO_LARGE as soon as it would pass `limit` bytes (send the full page instead).
 * `out` needs room for `limit` bytes.
 */
export function delta_encode(prev: usize, next: usize, size: u32, out: usize, limit: u32): u32 {
  let o: u32 = 0;
  let i: u32 = 0;
  let runStart: u32 = 0; // where the current zero run began
  while (i < size) {
    // Skip equal bytes fast: 16 at a time with SIMD, 8 without.
    if (ASC_FEATURE_SIMD) {
      while (i + 16 <= size) {
        const ne = ~i8x16.bitmask(i8x16.eq(v128.load(prev + i), v128.load(next + i))) & 0xffff;
        if (ne != 0) {
          i += <u32>ctz<i32>(ne);
          break;
        }
        i += 16;
      }
    } else {
      while (i + 8 <= size) {
        const x = load<u64>(prev + i) ^ load<u64>(next + i);
        if (x != 0) {
          i += <u32>(ctz<u64>(x) >>> 3);
          break;
        }
        i += 8;
      }
    }
    while (i < size && load<u8>(prev + i) == load<u8>(next + i)) i++;
    if (i >= size) break;
    // A differing run: up to the next equal byte.
    const start = i;
    i++;
    while (i < size && load<u8>(prev + i) != load<u8>(next + i)) i++;
    const zrun = start - runStart;
    const nzrun = i - start;
    if (o + ulebSize(zrun) + ulebSize(nzrun) + nzrun > limit) return DELTA_TOO_LARGE;
    o = putUleb(out, o, zrun);
    o = putUleb(out, o, nzrun);
    memory.copy(out + o, next + start, nzrun);
    o += nzrun;
    runStart = i;
  }
  return o;
}

/**
 * Applies the `len`-byte delta at `delta` to the `size`-byte page at `page`, in place. Returns 0,
 * or 1 if the delta is malformed (a length past the page or past the delta, an overlong
 * ULEB128); then the page may be partly updated and must be discarded. Never writes outside
 * the page, never reads outside the delta.
 */
export function delta_decode(page: usize, size: u32, delta: usize, len: u32): u32 {
  let d: u32 = 0;
  let p: u32 = 0;
  while (d < len) {
    // zrun
    let value: u32 = 0;
    let shift: u32 = 0;
    let byte: u32;
    do {
      if (d >= len || shift > 14) return DECODE_MALFORMED; // 3 ULEB bytes cover any page size
      byte = <u32>load<u8>(delta + d++);
      value |= (byte & 0x7f) << shift;
      shift += 7;
    } while ((byte & 0x80) != 0);
    if (value > size - p) return DECODE_MALFORMED;
    p += value;
    // nzrun
    value = 0;
    shift = 0;
    do {
      if (d >= len || shift > 14) return DECODE_MALFORMED;
      byte = <u32>load<u8>(delta + d++);
      value |= (byte & 0x7f) << shift;
      shift += 7;
    } while ((byte & 0x80) != 0);
    if (value > size - p || value > len - d) return DECODE_MALFORMED;
    memory.copy(page + p, delta + d, value);
    p += value;
    d += value;
  }
  return DECODE_OK;
}

// @ts-ignore: decorator
@inline function ulebSize(v: u32): u32 {
  return v < 0x80 ? 1 : v < 0x4000 ? 2 : v < 0x200000 ? 3 : v < 0x10000000 ? 4 : 5;
}

// @ts-ignore: decorator
@inline function putUleb(out: usize, o: u32, v: u32): u32 {
  while (v >= 0x80) {
    store<u8>(out + o++, <u8>(v | 0x80));
    v >>>= 7;
  }
  store<u8>(out + o++, <u8>v);
  return o;
}
