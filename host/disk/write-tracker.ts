/**
 * Write tracking for disk checkpoints (docs/disk-checkpoints.md): a disk wrapper that remembers
 * which byte ranges changed since the last checkpoint, so a checkpoint sends each changed range
 * once, with its bytes as they are now, however often the guest rewrote it.
 *
 * The tracker runs on every guest write, so it keeps ranges in a sorted interval set on typed
 * arrays: appends and extensions of the last range (sequential writes) cost O(1), other writes
 * are logged and merged in bulk (about 0.2 µs a random write). Its memory is bounded: past
 * `maxRanges` ranges it rounds ranges out to coarser blocks instead of growing, which costs bytes
 * in the next batch but never correctness (bytes that did not change are sent with the value
 * they already have).
 */

import { ErrorCode, TandemError } from "../errors.ts";
import type { Disk, DiskExtent, DiskInfo } from "./disk.ts";
import { DiskBase } from "./disk.ts";

/** Changed bytes, sent as they are now. */
export interface DataRecord {
  /** Byte offset in the disk. */
  offset: number;
  /** The bytes at `offset`. */
  data: Uint8Array;
}

/** A range that reads as zeros (zeroed or discarded, and not written since). */
export interface ZeroRecord {
  /** Byte offset in the disk. */
  offset: number;
  /** Bytes. */
  length: number;
  zero: true;
}

/** One change in a batch. */
export type BatchRecord = DataRecord | ZeroRecord;

/**
 * What one checkpoint sends for one disk: records in ascending offset order, none overlapping.
 * Applied in order to a copy of the disk as it was at the previous checkpoint, they make it equal
 * to the disk now.
 */
export type DiskBatch = BatchRecord[];

/** A byte range of a disk. */
export interface DiskRange {
  offset: number;
  length: number;
}

/** Options of {@link TrackedDisk}. */
export interface TrackedDiskOptions {
  /**
   * The most ranges remembered before they are coarsened into larger blocks (default 16384;
   * 32 bytes of memory each). Also bounds the ranges remembered as zero, which are forgotten
   * instead (they are then read back and sent as data).
   */
  maxRanges?: number;
}

/** Default bound on remembered ranges: start and end, double-buffered for merges, so 512 KiB. */
const DEFAULT_MAX_RANGES = 16384;
/** The first coarsening rounds ranges to this many bytes (a page: the unit guests write in). */
const FIRST_COARSE_GRAIN = 4096;
/** Out-of-order adds logged before they are merged into the set (48 bytes each, sort buffers included). */
const PENDING_RANGES = 2048;
/** Data records are split at this size, so no single record needs a huge buffer. */
export const MAX_DATA_RECORD_BYTES = 1 << 20;

/**
 * A sorted set of disjoint, non-adjacent half-open ranges [start, end), in parallel typed arrays,
 * of at most `maxRanges` ranges: past that it coarsens (or, for `overflow: "forget"`, empties).
 * Ranges added are rounded out to `grain` bytes (1 until coarsened) and clamped to `limit`.
 *
 * Adds that extend or follow the last range go straight in; others wait in a log of at most
 * {@link PENDING_RANGES}, merged in one pass when it fills or the set is read: a radix sort of the
 * log by start, then one merge with the set. That keeps a random write at amortized
 * O(digits + n / log size) instead of the O(n) memmove of inserting in place.
 */
class RangeSet {
  #starts = new Float64Array(64);
  #ends = new Float64Array(64);
  #count = 0;
  /** Where merges are built, swapped with the arrays above. */
  #spareStarts = new Float64Array(64);
  #spareEnds = new Float64Array(64);
  readonly #log = new RangeLog();
  #grain = 1;
  readonly #limit: number;
  readonly #maxRanges: number;
  readonly #overflow: "coarsen" | "forget";

  constructor(limit: number, maxRanges: number, overflow: "coarsen" | "forget") {
    this.#limit = limit;
    this.#maxRanges = maxRanges;
    this.#overflow = overflow;
  }

  get grain(): number {
    return this.#grain;
  }
  get empty(): boolean {
    return this.#count === 0 && this.#log.count === 0;
  }

  /** Adds [start, end), merging with every range it overlaps or touches. */
  add(start: number, end: number): void {
    if (this.#grain > 1) {
      start = Math.floor(start / this.#grain) * this.#grain;
      end = Math.min(Math.ceil(end / this.#grain) * this.#grain, this.#limit);
    }
    const n = this.#count;
    if (this.#log.count === 0) {
      // Sequential writes: past the last range, or growing it.
      if (n === 0 || start > this.#ends[n - 1]) {
        this.#reserve(n + 1);
        this.#starts[n] = start;
        this.#ends[n] = end;
        this.#count = n + 1;
        this.#bound();
        return;
      }
      if (start >= this.#starts[n - 1]) {
        if (end > this.#ends[n - 1]) this.#ends[n - 1] = end;
        return;
      }
    }
    if (this.#log.push(start, end)) this.#settle();
  }

  /** Removes [start, end) exactly (meant for grain 1), splitting a range it falls inside. */
  remove(start: number, end: number): void {
    this.#settle();
    const n = this.#count;
    // The ranges that overlap [start, end); ranges that only touch it stay whole.
    let first = 0;
    for (let hi = n; first < hi; ) {
      const mid = (first + hi) >>> 1;
      if (this.#ends[mid] > start) hi = mid;
      else first = mid + 1;
    }
    let last = first;
    while (last < n && this.#starts[last] < end) last++;
    if (first === last) return;
    const keep: number[] = [];
    if (this.#starts[first] < start) keep.push(this.#starts[first], start);
    if (this.#ends[last - 1] > end) keep.push(end, this.#ends[last - 1]);
    const kept = keep.length / 2;
    this.#reserve(n - (last - first) + kept);
    this.#starts.copyWithin(first + kept, last, n);
    this.#ends.copyWithin(first + kept, last, n);
    for (let k = 0; k < kept; k++) {
      this.#starts[first + k] = keep[2 * k];
      this.#ends[first + k] = keep[2 * k + 1];
    }
    this.#count = n - (last - first) + kept;
    this.#bound();
  }

  /** Forgets every range and returns to byte granularity. */
  clear(): void {
    this.#count = 0;
    this.#log.clear();
    this.#grain = 1;
  }

  /** Calls `visit` with each range in ascending order. */
  forEach(visit: (start: number, end: number) => void): void {
    this.#settle();
    for (let i = 0; i < this.#count; i++) visit(this.#starts[i], this.#ends[i]);
  }

  /** Merges the log into the set. */
  #settle(): void {
    const p = this.#log.count;
    if (p === 0) return;
    const { starts, ends } = this.#log.sorted();
    this.#log.clear();
    // Merge the two lists, both sorted by start, joining ranges that overlap or touch.
    const n = this.#count;
    this.#reserve(n + p);
    const outStarts = this.#spareStarts;
    const outEnds = this.#spareEnds;
    let out = 0;
    for (let a = 0, b = 0; a < n || b < p; ) {
      let s: number;
      let e: number;
      if (b >= p || (a < n && this.#starts[a] <= starts[b])) {
        s = this.#starts[a];
        e = this.#ends[a++];
      } else {
        s = starts[b];
        e = ends[b++];
      }
      if (out > 0 && s <= outEnds[out - 1]) {
        if (e > outEnds[out - 1]) outEnds[out - 1] = e;
      } else {
        outStarts[out] = s;
        outEnds[out] = e;
        out++;
      }
    }
    this.#spareStarts = this.#starts;
    this.#spareEnds = this.#ends;
    this.#starts = outStarts;
    this.#ends = outEnds;
    this.#count = out;
    this.#bound();
  }

  /** Keeps the set within `maxRanges`. */
  #bound(): void {
    if (this.#count <= this.#maxRanges) return;
    // Zero ranges cannot be rounded out (that would claim bytes that hold data are zero).
    if (this.#overflow === "forget") this.clear();
    else this.#coarsen(this.#maxRanges >>> 1);
  }

  /** Doubles the grain (to a page at first) and re-merges, until at most `target` ranges remain. */
  #coarsen(target: number): void {
    // Terminates: once the grain reaches the limit, everything is one range.
    while (this.#count > target && this.#grain < this.#limit) {
      this.#grain = this.#grain < FIRST_COARSE_GRAIN ? FIRST_COARSE_GRAIN : this.#grain * 2;
      const g = this.#grain;
      let out = 0;
      for (let i = 0; i < this.#count; i++) {
        const s = Math.floor(this.#starts[i] / g) * g;
        const e = Math.min(Math.ceil(this.#ends[i] / g) * g, this.#limit);
        if (out > 0 && s <= this.#ends[out - 1]) {
          if (e > this.#ends[out - 1]) this.#ends[out - 1] = e;
        } else {
          this.#starts[out] = s;
          this.#ends[out] = e;
          out++;
        }
      }
      this.#count = out;
    }
  }

  /** Makes room for `capacity` ranges in the set's arrays and the spare ones. */
  #reserve(capacity: number): void {
    if (capacity <= this.#starts.length && capacity <= this.#spareStarts.length) return;
    const size = Math.max(capacity, this.#starts.length * 2);
    const grow = (from: Float64Array, keep: number) => {
      const to = new Float64Array(size);
      to.set(from.subarray(0, keep));
      return to;
    };
    this.#starts = grow(this.#starts, this.#count);
    this.#ends = grow(this.#ends, this.#count);
    this.#spareStarts = new Float64Array(size);
    this.#spareEnds = new Float64Array(size);
  }
}

/**
 * Ranges in arrival order, sorted by start on demand with an LSD radix sort over the bytes of the
 * start (a safe integer, split into 32-bit halves so digits come from integer shifts): V8's
 * `Float64Array.prototype.sort` costs ~200 ns an element, this ~25 ns a byte that varies.
 */
class RangeLog {
  #starts = new Float64Array(PENDING_RANGES);
  #ends = new Float64Array(PENDING_RANGES);
  #lows = new Uint32Array(PENDING_RANGES);
  #highs = new Uint32Array(PENDING_RANGES);
  #otherStarts = new Float64Array(PENDING_RANGES);
  #otherEnds = new Float64Array(PENDING_RANGES);
  #otherLows = new Uint32Array(PENDING_RANGES);
  #otherHighs = new Uint32Array(PENDING_RANGES);
  readonly #buckets = new Uint32Array(256);
  #count = 0;

  get count(): number {
    return this.#count;
  }
  /** Appends a range; true when the log is full. */
  push(start: number, end: number): boolean {
    this.#starts[this.#count] = start;
    this.#ends[this.#count] = end;
    return ++this.#count === PENDING_RANGES;
  }
  clear(): void {
    this.#count = 0;
  }
  /** The ranges sorted by start (views valid until the next push). */
  sorted(): { starts: Float64Array; ends: Float64Array } {
    const n = this.#count;
    let [starts, ends, lows, highs] = [this.#starts, this.#ends, this.#lows, this.#highs];
    let [toStarts, toEnds, toLows, toHighs] = [this.#otherStarts, this.#otherEnds, this.#otherLows, this.#otherHighs];
    let anyLow = 0;
    let anyHigh = 0;
    for (let i = 0; i < n; i++) {
      const low = starts[i] >>> 0;
      const high = (starts[i] - low) / 2 ** 32;
      lows[i] = low;
      highs[i] = high;
      anyLow |= low;
      anyHigh |= high;
    }
    const buckets = this.#buckets;
    for (let pass = 0; pass < 8; pass++) {
      const shift = (pass & 3) * 8;
      // A byte that is zero in every start orders nothing.
      if ((((pass < 4 ? anyLow : anyHigh) >>> shift) & 0xff) === 0) continue;
      const keys = pass < 4 ? lows : highs;
      buckets.fill(0);
      for (let i = 0; i < n; i++) buckets[(keys[i] >>> shift) & 0xff]++;
      for (let d = 0, sum = 0; d < 256; d++) {
        const c = buckets[d];
        buckets[d] = sum;
        sum += c;
      }
      for (let i = 0; i < n; i++) {
        const to = buckets[(keys[i] >>> shift) & 0xff]++;
        toStarts[to] = starts[i];
        toEnds[to] = ends[i];
        toLows[to] = lows[i];
        toHighs[to] = highs[i];
      }
      [starts, toStarts, ends, toEnds, lows, toLows, highs, toHighs] = [toStarts, starts, toEnds, ends, toLows, lows, toHighs, highs];
    }
    [this.#starts, this.#ends, this.#lows, this.#highs] = [starts, ends, lows, highs];
    [this.#otherStarts, this.#otherEnds, this.#otherLows, this.#otherHighs] = [toStarts, toEnds, toLows, toHighs];
    return { starts: starts.subarray(0, n), ends: ends.subarray(0, n) };
  }
}

/**
 * A disk that forwards every call to `inner` and remembers what changed since the last
 * {@link takeBatch}: writes, zeroing and discards. Ranges a call asked to change are remembered
 * even if the call failed part-way, since it may have changed some of them (as data: a range
 * is sent as zeros only if zeroing it succeeded).
 */
export class TrackedDisk extends DiskBase {
  readonly format: string;
  readonly size: number;
  readonly readOnly: boolean;
  readonly backing: Disk | null;
  /** The disk underneath, which the wrapper owns (and closes on close). */
  readonly inner: Disk;
  readonly #changed: RangeSet;
  /** Ranges last zeroed or discarded and not written since: sent as zero records, not read back. */
  readonly #zeroed: RangeSet;

  constructor(inner: Disk, options: TrackedDiskOptions = {}) {
    super();
    const maxRanges = options.maxRanges ?? DEFAULT_MAX_RANGES;
    if (!Number.isSafeInteger(maxRanges) || maxRanges < 2) {
      throw new TandemError(ErrorCode.BadArgument, `maxRanges must be an integer of at least 2, not ${maxRanges}`);
    }
    this.inner = inner;
    this.format = inner.format;
    this.size = inner.size;
    this.readOnly = inner.readOnly;
    this.backing = inner.backing;
    this.#changed = new RangeSet(inner.size, maxRanges, "coarsen");
    this.#zeroed = new RangeSet(inner.size, maxRanges, "forget");
  }

  /**
   * The changes since the last call (or since the wrapper was made), with their bytes read back
   * from the disk now, and starts tracking afresh. Call it while the guest is paused.
   */
  takeBatch(): DiskBatch {
    const batch: DiskBatch = [];
    const zeros: DiskRange[] = [];
    this.#zeroed.forEach((start, end) => zeros.push({ offset: start, length: end - start }));
    let z = 0;
    this.#changed.forEach((start, end) => {
      let at = start;
      while (at < end) {
        while (z < zeros.length && zeros[z].offset + zeros[z].length <= at) z++;
        const zero = zeros[z];
        if (zero !== undefined && zero.offset <= at) {
          const stop = Math.min(end, zero.offset + zero.length);
          batch.push({ offset: at, length: stop - at, zero: true });
          at = stop;
          continue;
        }
        const stop = Math.min(end, zero === undefined ? end : zero.offset, at + MAX_DATA_RECORD_BYTES);
        batch.push({ offset: at, data: this.inner.read(at, stop - at) });
        at = stop;
      }
    });
    this.#changed.clear();
    this.#zeroed.clear();
    return batch;
  }

  /** The ranges changed since the last {@link takeBatch}, ascending (coarsened ones rounded out). */
  changedRanges(): DiskRange[] {
    const ranges: DiskRange[] = [];
    this.#changed.forEach((start, end) => ranges.push({ offset: start, length: end - start }));
    return ranges;
  }

  /** The block size ranges are rounded to now: 1 until the range bound forced coarsening. */
  get granularity(): number {
    return this.#changed.grain;
  }

  protected doRead(offset: number, target: Uint8Array): void {
    this.inner.readInto(offset, target);
  }
  protected doWrite(offset: number, data: Uint8Array): void {
    try {
      this.inner.write(offset, data);
    } finally {
      this.#mark(offset, offset + data.length, false);
    }
  }
  protected doWriteZeroes(offset: number, length: number): void {
    let zeroed = false;
    try {
      this.inner.writeZeroes(offset, length);
      zeroed = true;
    } finally {
      this.#mark(offset, offset + length, zeroed);
    }
  }
  protected doDiscard(offset: number, length: number): void {
    let zeroed = false;
    try {
      this.inner.discard(offset, length);
      zeroed = true;
    } finally {
      this.#mark(offset, offset + length, zeroed);
    }
  }
  protected doFlush(): void {
    this.inner.flush();
  }
  protected doMap(offset: number, length: number): DiskExtent[] {
    return this.inner.map(offset, length);
  }
  protected doClose(): void {
    this.inner.close();
  }
  info(): DiskInfo {
    return this.inner.info();
  }

  /** Records [start, end) as changed, and as reading zeros if `zero`. */
  #mark(start: number, end: number, zero: boolean): void {
    this.#changed.add(start, end);
    if (zero) this.#zeroed.add(start, end);
    else if (!this.#zeroed.empty) this.#zeroed.remove(start, end);
  }
}
