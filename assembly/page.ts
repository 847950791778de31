// Page geometry and the two page predicates every scan is built from.
//
// A guest page is 4096 bytes (x86 small page, and the unit of every dirty log in tandem).
// Pointers are byte offsets into the linear memory the module was given; pages need no
// alignment, because v128.load and load<u64> accept any address (alignment is a hint).

// @ts-ignore: decorator
@inline export const PAGE_SHIFT: u32 = 12;
// @ts-ignore: decorator
@inline export const PAGE_SIZE: usize = 1 << PAGE_SHIFT;
// Bytes examined per loop step: four v128 lanes, or eight u64 words without SIMD.
// @ts-ignore: decorator
@inline const STEP: usize = 64;

/** Whether the pages at `a` and `b` hold the same 4096 bytes. */
// @ts-ignore: decorator
@inline export function pageEqual(a: usize, b: usize): bool {
  if (ASC_FEATURE_SIMD) {
    for (let i: usize = 0; i < PAGE_SIZE; i += STEP) {
      let x = v128.xor(v128.load(a + i), v128.load(b + i));
      x = v128.or(x, v128.xor(v128.load(a + i, 16), v128.load(b + i, 16)));
      x = v128.or(x, v128.xor(v128.load(a + i, 32), v128.load(b + i, 32)));
      x = v128.or(x, v128.xor(v128.load(a + i, 48), v128.load(b + i, 48)));
      if (v128.any_true(x)) return false;
    }
  } else {
    for (let i: usize = 0; i < PAGE_SIZE; i += STEP) {
      let x = load<u64>(a + i) ^ load<u64>(b + i);
      x |= load<u64>(a + i, 8) ^ load<u64>(b + i, 8);
      x |= load<u64>(a + i, 16) ^ load<u64>(b + i, 16);
      x |= load<u64>(a + i, 24) ^ load<u64>(b + i, 24);
      x |= load<u64>(a + i, 32) ^ load<u64>(b + i, 32);
      x |= load<u64>(a + i, 40) ^ load<u64>(b + i, 40);
      x |= load<u64>(a + i, 48) ^ load<u64>(b + i, 48);
      x |= load<u64>(a + i, 56) ^ load<u64>(b + i, 56);
      if (x != 0) return false;
    }
  }
  return true;
}

/** Whether every byte of the page at `p` is zero. */
// @ts-ignore: decorator
@inline export function pageIsZero(p: usize): bool {
  if (ASC_FEATURE_SIMD) {
    for (let i: usize = 0; i < PAGE_SIZE; i += STEP) {
      let x = v128.or(v128.load(p + i), v128.load(p + i, 16));
      x = v128.or(x, v128.or(v128.load(p + i, 32), v128.load(p + i, 48)));
      if (v128.any_true(x)) return false;
    }
  } else {
    for (let i: usize = 0; i < PAGE_SIZE; i += STEP) {
      let x = load<u64>(p + i) | load<u64>(p + i, 8) | load<u64>(p + i, 16) | load<u64>(p + i, 24);
      x |= load<u64>(p + i, 32) | load<u64>(p + i, 40) | load<u64>(p + i, 48) | load<u64>(p + i, 56);
      if (x != 0) return false;
    }
  }
  return true;
}
