/**
 * Where a qcow2 image's metadata lies, and the guard every write passes: QEMU's overlap check
 * (`qcow2_check_metadata_overlap`, cow-disks.md 3.2). A corrupt or hostile image can point a data
 * cluster, an L2 table or a refcount block at its own metadata; the refcounts cannot be trusted
 * to say so (they are part of what may be damaged). So before any write reaches the file, the
 * clusters it touches are looked up here, and a write onto metadata of a kind it is not meant to
 * write is refused, and the image marked corrupt.
 *
 * Contiguous structures (header, L1 table, refcount table, snapshot table, the snapshots' L1
 * tables) are kept as ranges; single-cluster ones (active L2 tables, refcount blocks, the
 * snapshots' L2 tables) as a map from cluster to the kinds it holds. In front of both sits a
 * filter, one bit per host cluster, set for every cluster that holds metadata: every write is
 * checked, nearly all land on data, and for those the check is one bit test. The filter is kept
 * current as structures are added, and rebuilt when one moves (the refcount table, when it grows).
 */

import { ErrorCode, TandemError } from "../../errors.ts";

/** Kinds of metadata, as bits (QEMU's QCow2MetadataOverlap). */
export const Metadata = {
  Header: 1,
  ActiveL1: 2,
  ActiveL2: 4,
  RefcountTable: 8,
  RefcountBlock: 16,
  SnapshotTable: 32,
  InactiveL1: 64,
  InactiveL2: 128,
} as const;
/** A set of {@link Metadata} bits. */
export type MetadataKinds = number;

/** QEMU's names for the kinds (metadata_ol_names), for messages. */
const NAMES: ReadonlyArray<readonly [number, string]> = [
  [Metadata.Header, "qcow2_header"],
  [Metadata.ActiveL1, "active L1 table"],
  [Metadata.ActiveL2, "active L2 table"],
  [Metadata.RefcountTable, "refcount table"],
  [Metadata.RefcountBlock, "refcount block"],
  [Metadata.SnapshotTable, "snapshot table"],
  [Metadata.InactiveL1, "inactive L1 table"],
  [Metadata.InactiveL2, "inactive L2 table"],
];

/** The name of the lowest kind in `kinds`. */
export function metadataName(kinds: MetadataKinds): string {
  for (const [bit, name] of NAMES) if ((kinds & bit) !== 0) return name;
  return "metadata";
}

/**
 * Bits in the filter (128 KiB): one per host cluster in files of up to 2^20 clusters (64 GiB of
 * 64 KiB clusters, 512 MiB of 512-byte ones). In a larger file clusters share bits (cluster mod
 * 2^20), so a set bit says "maybe metadata" and the exact lookup decides; a clear bit says "no".
 */
const FILTER_BITS = 1 << 20;
const FILTER_MASK = FILTER_BITS - 1;

/** A contiguous structure: clusters [first, end). */
interface Range {
  kind: number;
  first: number;
  end: number;
}

/** Called when a write would overlap metadata; must throw. */
export type OverlapHandler = (kinds: MetadataKinds, offset: number, bytes: number) => never;

/** The metadata of one image, and the check against it. */
export class MetadataIndex {
  readonly #clusterSize: number;
  readonly #ranges: Range[] = [];
  readonly #clusters = new Map<number, number>();
  /** The map's keys in ascending order, rebuilt lazily for checks of long ranges. */
  #sorted: number[] | null = null;
  /** Bit (cluster mod FILTER_BITS) is set if some cluster holding metadata maps to it. */
  readonly #filter = new Uint32Array(FILTER_BITS / 32);
  /** Bits marked so far (an upper bound); once it would reach FILTER_BITS, every bit is set instead. */
  #marked = 0;
  #onOverlap: OverlapHandler | null = null;

  constructor(clusterSize: number) {
    this.#clusterSize = clusterSize;
    this.setRange(Metadata.Header, 0, clusterSize);
  }

  /** Sets what a refused write does (mark the image corrupt, then throw). */
  onOverlap(handler: OverlapHandler): void {
    this.#onOverlap = handler;
  }

  /** Sets the one range of `kind` (header, active L1, refcount table, snapshot table) to `bytes` bytes at `offset`. */
  setRange(kind: number, offset: number, bytes: number): void {
    const at = this.#ranges.findIndex((range) => range.kind === kind);
    if (at >= 0) {
      this.#ranges.splice(at, 1);
      // The old range's bits may be shared with nothing else now: mark everything afresh.
      this.#rebuildFilter();
    }
    this.addRange(kind, offset, bytes);
  }

  /** Adds a range of `kind` (one more snapshot L1 table). */
  addRange(kind: number, offset: number, bytes: number): void {
    if (bytes <= 0) return;
    const cs = this.#clusterSize;
    const range = { kind, first: Math.floor(offset / cs), end: Math.ceil((offset + bytes) / cs) };
    this.#ranges.push(range);
    this.#mark(range.first, range.end);
  }

  /** Records that host cluster `cluster` holds metadata of `kind` (an L2 table, a refcount block). */
  addCluster(cluster: number, kind: number): void {
    const had = this.#clusters.get(cluster);
    if (had === undefined) {
      this.#sorted = null;
      this.#mark(cluster, cluster + 1);
    }
    this.#clusters.set(cluster, (had ?? 0) | kind);
  }

  /** The kinds of metadata host cluster `cluster` holds (0: none). */
  kindsAt(cluster: number): MetadataKinds {
    if (!this.#maybe(cluster)) return 0;
    let kinds = this.#clusters.get(cluster) ?? 0;
    const ranges = this.#ranges;
    for (let i = 0; i < ranges.length; i++) {
      const range = ranges[i];
      if (cluster >= range.first && cluster < range.end) kinds |= range.kind;
    }
    return kinds;
  }

  /**
   * The kinds of metadata other than `allowed` that the `bytes` bytes at host offset `offset`
   * touch (0: none). `allowed` is what the write means to change: 0 for guest data.
   */
  overlap(offset: number, bytes: number, allowed: MetadataKinds): MetadataKinds {
    const cs = this.#clusterSize;
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + Math.max(1, bytes) - 1) / cs);
    if (first === last) return this.kindsAt(first) & ~allowed;
    if (last - first < FILTER_BITS) {
      let maybe = false;
      for (let cluster = first; cluster <= last && !maybe; cluster++) maybe = this.#maybe(cluster);
      if (!maybe) return 0;
    }
    let kinds = 0;
    for (const range of this.#ranges) {
      if (range.first <= last && range.end > first) kinds |= range.kind;
    }
    const sorted = (this.#sorted ??= [...this.#clusters.keys()].sort((a, b) => a - b));
    let lo = 0;
    let hi = sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (sorted[mid] < first) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < sorted.length && sorted[i] <= last; i++) kinds |= this.#clusters.get(sorted[i]) ?? 0;
    return kinds & ~allowed;
  }

  /**
   * Refuses (through the overlap handler, which throws) a write of `bytes` bytes at `offset`
   * that would touch metadata other than `allowed`.
   */
  guard(offset: number, bytes: number, allowed: MetadataKinds): void {
    const kinds = this.overlap(offset, bytes, allowed);
    if (kinds === 0) return;
    if (this.#onOverlap !== null) this.#onOverlap(kinds, offset, bytes);
    throw new TandemError(ErrorCode.DiskCorrupt, `preventing invalid write on metadata (overlaps with ${metadataName(kinds)}) at offset ${offset}`);
  }

  /** False if no metadata lies in host cluster `cluster` (`&` reduces it mod 2^32, and so mod FILTER_BITS). */
  #maybe(cluster: number): boolean {
    const bit = cluster & FILTER_MASK;
    return (this.#filter[bit >>> 5] & (1 << (bit & 31))) !== 0;
  }

  /**
   * Sets the filter bits of clusters [first, end). The work is bounded by FILTER_BITS over the
   * index's life (until a rebuild), however many or long the structures a hostile image names:
   * past that, every bit is set and each check takes the exact path.
   */
  #mark(first: number, end: number): void {
    if (this.#marked >= FILTER_BITS) return;
    if (end - first >= FILTER_BITS - this.#marked) {
      this.#filter.fill(0xffff_ffff);
      this.#marked = FILTER_BITS;
      return;
    }
    this.#marked += end - first;
    for (let cluster = first; cluster < end; cluster++) {
      const bit = cluster & FILTER_MASK;
      this.#filter[bit >>> 5] |= 1 << (bit & 31);
    }
  }

  #rebuildFilter(): void {
    this.#filter.fill(0);
    this.#marked = 0;
    for (const range of this.#ranges) this.#mark(range.first, range.end);
    for (const cluster of this.#clusters.keys()) this.#mark(cluster, cluster + 1);
  }
}
