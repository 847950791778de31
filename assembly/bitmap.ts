// Dirty-page bitmaps.
//
// Layout: one bit per guest page. Page i is bit (i & 63) of the little-endian u64 word at
// map + (i >> 6) * 8, so the host can read the same map as Uint32 pairs. A map of `bits`
// pages spans ceil(bits / 64) words; bits at or past `bits` in the last word are never set
// by bitmap_mark and are masked off by every reader, so stray bits there cannot leak out.

// @ts-ignore: decorator
@inline const WORD_BYTES: usize = 8;
// Words tested per SIMD step while skipping clean stretches: four v128 = 512 pages.
// @ts-ignore: decorator
@inline const SKIP_WORDS: u32 = 8;

/** Sets bits [first, end) of the map. Callers keep end <= the map's bit count. */
export function bitmap_mark(map: usize, first: u32, end: u32): void {
  if (first >= end) return;
  const firstWord = first >>> 6;
  const lastWord = (end - 1) >>> 6;
  const headMask = u64.MAX_VALUE << (first & 63);
  const tailMask = u64.MAX_VALUE >>> (63 - ((end - 1) & 63));
  const head = map + (<usize>firstWord << 3);
  if (firstWord == lastWord) {
    store<u64>(head, load<u64>(head) | (headMask & tailMask));
    return;
  }
  store<u64>(head, load<u64>(head) | headMask);
  const inner = lastWord - firstWord - 1;
  if (inner > 0) memory.fill(head + WORD_BYTES, 0xff, <usize>inner << 3);
  const tail = map + (<usize>lastWord << 3);
  store<u64>(tail, load<u64>(tail) | tailMask);
}

/** Number of set bits among the first `bits` bits of the map. */
export function bitmap_count(map: usize, bits: u32): u32 {
  const full = bits >>> 6;
  let n: u64 = 0;
  for (let w: u32 = 0; w < full; w++) n += popcnt<u64>(load<u64>(map + (<usize>w << 3)));
  const rest = bits & 63;
  if (rest != 0) n += popcnt<u64>(load<u64>(map + (<usize>full << 3)) & ((<u64>1 << rest) - 1));
  return <u32>n;
}

/** Writes the indices of set bits, ascending, as u32 at `out`; returns how many. */
export function bitmap_scan(map: usize, bits: u32, out: usize): u32 {
  return scan(map, bits, out, false);
}

/** As bitmap_scan, and zeroes every word it read: take-and-clear in one pass. */
export function bitmap_scan_clear(map: usize, bits: u32, out: usize): u32 {
  return scan(map, bits, out, true);
}

// @ts-ignore: decorator
@inline function scan(map: usize, bits: u32, out: usize, clear: bool): u32 {
  const words = (bits + 63) >>> 6;
  // The last word may be partial; only its low `bits & 63` bits belong to the map.
  const lastMask: u64 = (bits & 63) == 0 ? u64.MAX_VALUE : (<u64>1 << (bits & 63)) - 1;
  let n: u32 = 0;
  let w: u32 = 0;
  while (w < words) {
    if (ASC_FEATURE_SIMD) {
      // Dirty pages cluster, so whole 512-page stretches are often clean: skip them at once.
      if (w + SKIP_WORDS <= words) {
        const p = map + (<usize>w << 3);
        const any = v128.or(
          v128.or(v128.load(p), v128.load(p, 16)),
          v128.or(v128.load(p, 32), v128.load(p, 48)),
        );
        if (!v128.any_true(any)) {
          w += SKIP_WORDS;
          continue;
        }
      }
    }
    const end = ASC_FEATURE_SIMD ? min(w + SKIP_WORDS, words) : words;
    for (; w < end; w++) {
      const p = map + (<usize>w << 3);
      let x = load<u64>(p);
      if (x == 0) continue;
      if (clear) store<u64>(p, 0);
      if (w == words - 1) x &= lastMask;
      const base = w << 6;
      while (x != 0) {
        store<u32>(out + (<usize>n << 2), base + <u32>ctz<u64>(x));
        x &= x - 1;
        n++;
      }
    }
  }
  return n;
}
