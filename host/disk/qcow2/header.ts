/**
 * The qcow2 header and its extensions: parse with every field validated, and serialize. Layout
 * from QEMU's docs/interop/qcow2.rst (summarised in shared/reference/cow-disks.md section 2).
 * Every integer is big-endian.
 */

import { ErrorCode, TandemError } from "../../errors.ts";

/** "QFI\xfb". */
export const QCOW2_MAGIC = 0x514649fb;

// Header field offsets (qcow2.rst, "Header").
/** u32 magic. */
export const H_MAGIC = 0;
/** u32 version, 2 or 3. */
export const H_VERSION = 4;
/** u64 offset of the backing file name (0 = none). */
export const H_BACKING_FILE_OFFSET = 8;
/** u32 length of the backing file name, not NUL-terminated. */
export const H_BACKING_FILE_SIZE = 16;
/** u32 log2 of the cluster size. */
export const H_CLUSTER_BITS = 20;
/** u64 virtual size in bytes. */
export const H_SIZE = 24;
/** u32 encryption method (0 none). */
export const H_CRYPT_METHOD = 32;
/** u32 number of L1 entries. */
export const H_L1_SIZE = 36;
/** u64 offset of the L1 table. */
export const H_L1_TABLE_OFFSET = 40;
/** u64 offset of the refcount table. */
export const H_REFCOUNT_TABLE_OFFSET = 48;
/** u32 clusters the refcount table occupies. */
export const H_REFCOUNT_TABLE_CLUSTERS = 56;
/** u32 number of internal snapshots. */
export const H_NB_SNAPSHOTS = 60;
/** u64 offset of the snapshot table. */
export const H_SNAPSHOTS_OFFSET = 64;
/** u64 incompatible feature bits (v3). */
export const H_INCOMPATIBLE_FEATURES = 72;
/** u64 compatible feature bits (v3). */
export const H_COMPATIBLE_FEATURES = 80;
/** u64 auto-clear feature bits (v3). */
export const H_AUTOCLEAR_FEATURES = 88;
/** u32 log2 of the refcount width in bits (v3; v2 is always 4, 16-bit refcounts). */
export const H_REFCOUNT_ORDER = 96;
/** u32 header length in bytes (v3). */
export const H_HEADER_LENGTH = 100;
/** u8 compression type (v3, optional: present when header_length > 104). */
export const H_COMPRESSION_TYPE = 104;

/** A version 2 header is exactly this long. */
export const V2_HEADER_LENGTH = 72;
/** A version 3 header is at least this long. */
export const V3_MIN_HEADER_LENGTH = 104;
/** The version 3 header tandem writes: with the compression type byte and its padding, as QEMU writes. */
export const V3_HEADER_LENGTH = 112;

/** Incompatible feature bits (qcow2.rst): an image with a bit set that a reader does not implement must not be opened. */
export const Incompatible = {
  /** Refcounts may be inconsistent (lazy refcounts); repair before writing. */
  Dirty: 1n << 0n,
  /** The image is corrupt; no writes until repaired. */
  Corrupt: 1n << 1n,
  /** Data lives in an external file. */
  ExternalData: 1n << 2n,
  /** The compression type field is not deflate. */
  CompressionType: 1n << 3n,
  /** L2 entries are 128 bits with subcluster bitmaps. */
  ExtendedL2: 1n << 4n,
} as const;
/** Names of the incompatible bits, for messages and the feature-name table. */
export const INCOMPATIBLE_NAMES = ["dirty bit", "corrupt bit", "external data file", "compression type", "extended L2 entries"];

/** Compatible feature bits. */
export const Compatible = {
  /** Refcount updates may be postponed; the dirty bit is set while they are. */
  LazyRefcounts: 1n << 0n,
} as const;

/** Header extension types (qcow2.rst, "Header extensions"). */
export const Extension = {
  End: 0x00000000,
  BackingFormat: 0xe2792aca,
  FeatureNameTable: 0x6803f857,
  Bitmaps: 0x23852875,
  FullDiskEncryption: 0x0537be77,
  ExternalDataFile: 0x44415441,
} as const;

/** A feature-name table entry is 48 bytes: u8 type, u8 bit, char name[46]. */
export const FEATURE_NAME_ENTRY = 48;
/** Cluster sizes QEMU allows: 512 B (bits 9) to 2 MiB (bits 21). */
export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;
/** QEMU's limits (block/qcow2.h): the L1 table at most 32 MiB, the refcount table at most 8 MiB. */
export const MAX_L1_BYTES = 32 << 20;
export const MAX_REFCOUNT_TABLE_BYTES = 8 << 20;
/** The backing file name is at most 1023 bytes (qcow2.rst). */
export const MAX_BACKING_NAME = 1023;

/** A header extension tandem does not interpret, kept so that a rewritten header preserves it. */
export interface UnknownExtension {
  type: number;
  data: Uint8Array;
}

/** A parsed qcow2 header. */
export interface Qcow2Header {
  version: 2 | 3;
  clusterBits: number;
  /** Virtual size in bytes. */
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  /** log2 of the refcount width in bits. */
  refcountOrder: number;
  headerLength: number;
  /** 0 = deflate. */
  compressionType: number;
  backingFile?: string;
  /** From the backing format extension. */
  backingFormat?: string;
  /** Extensions other than the backing format, feature-name table and end marker. */
  unknownExtensions: UnknownExtension[];
}

/** Derived sizes every qcow2 structure walk needs. */
export interface Qcow2Geometry {
  clusterSize: number;
  /** Entries per L2 table (8 bytes each). */
  l2Entries: number;
  /** Refcount width in bits. */
  refcountBits: number;
  /** Refcounts per refcount block. */
  refcountBlockEntries: number;
  /** The largest value a refcount can hold. */
  maxRefcount: number;
}

/** The sizes that follow from a header. */
export function geometry(header: Pick<Qcow2Header, "clusterBits" | "refcountOrder">): Qcow2Geometry {
  const clusterSize = 2 ** header.clusterBits;
  const refcountBits = 2 ** header.refcountOrder;
  return {
    clusterSize,
    l2Entries: clusterSize / 8,
    refcountBits,
    refcountBlockEntries: (clusterSize * 8) / refcountBits,
    maxRefcount: refcountBits === 64 ? Number.MAX_SAFE_INTEGER : 2 ** refcountBits - 1,
  };
}

/** L1 entries needed to map `size` bytes with `clusterBits` clusters. */
export function l1EntriesFor(size: number, clusterBits: number): number {
  const bytesPerL2 = 2 ** clusterBits * (2 ** clusterBits / 8);
  return Math.ceil(size / bytesPerL2);
}

/**
 * Parses and validates the header in `head` (the image's first cluster, or as much of it as the
 * file has). `fileSize` bounds every offset; `name` goes into messages. Unsupported features fail
 * with E_DISK_UNSUPPORTED, malformed or hostile values with E_DISK_FORMAT.
 */
export function parseHeader(head: Uint8Array, fileSize: number, name: string): Qcow2Header {
  const bad = (what: string): TandemError => new TandemError(ErrorCode.DiskFormat, `${name}: ${what}`);
  if (head.length < V2_HEADER_LENGTH) throw bad(`too short for a qcow2 header (${head.length} bytes)`);
  const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
  if (view.getUint32(H_MAGIC) !== QCOW2_MAGIC) throw bad("not a qcow2 image (bad magic)");
  const version = view.getUint32(H_VERSION);
  if (version !== 2 && version !== 3) {
    throw new TandemError(ErrorCode.DiskUnsupported, `${name}: qcow2 version ${version} is not supported (only 2 and 3)`);
  }
  const u64 = (at: number, what: string): number => {
    const value = view.getBigUint64(at);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`${what} ${value} is too large`);
    return Number(value);
  };
  const clusterBits = view.getUint32(H_CLUSTER_BITS);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw bad(`cluster_bits ${clusterBits} is outside ${MIN_CLUSTER_BITS}..${MAX_CLUSTER_BITS} (512 B to 2 MiB clusters)`);
  }
  const clusterSize = 2 ** clusterBits;
  const header: Qcow2Header = {
    version,
    clusterBits,
    size: u64(H_SIZE, "virtual size"),
    cryptMethod: view.getUint32(H_CRYPT_METHOD),
    l1Size: view.getUint32(H_L1_SIZE),
    l1TableOffset: u64(H_L1_TABLE_OFFSET, "L1 table offset"),
    refcountTableOffset: u64(H_REFCOUNT_TABLE_OFFSET, "refcount table offset"),
    refcountTableClusters: view.getUint32(H_REFCOUNT_TABLE_CLUSTERS),
    nbSnapshots: view.getUint32(H_NB_SNAPSHOTS),
    snapshotsOffset: u64(H_SNAPSHOTS_OFFSET, "snapshot table offset"),
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    headerLength: V2_HEADER_LENGTH,
    compressionType: 0,
    unknownExtensions: [],
  };
  if (version === 3) {
    if (head.length < V3_MIN_HEADER_LENGTH) throw bad("too short for a version 3 header");
    header.incompatibleFeatures = view.getBigUint64(H_INCOMPATIBLE_FEATURES);
    header.compatibleFeatures = view.getBigUint64(H_COMPATIBLE_FEATURES);
    header.autoclearFeatures = view.getBigUint64(H_AUTOCLEAR_FEATURES);
    header.refcountOrder = view.getUint32(H_REFCOUNT_ORDER);
    header.headerLength = view.getUint32(H_HEADER_LENGTH);
    if (header.headerLength < V3_MIN_HEADER_LENGTH || header.headerLength % 8 !== 0 || header.headerLength > Math.min(clusterSize, head.length)) {
      throw bad(`header_length ${header.headerLength} is not a multiple of 8 between ${V3_MIN_HEADER_LENGTH} and the cluster size`);
    }
    if (header.headerLength > H_COMPRESSION_TYPE) header.compressionType = head[H_COMPRESSION_TYPE];
  }
  if (header.refcountOrder > 6) throw bad(`refcount_order ${header.refcountOrder} is over 6 (64-bit refcounts)`);

  checkFeatures(header, name);
  if (header.cryptMethod !== 0) {
    throw new TandemError(ErrorCode.DiskUnsupported, `${name}: encrypted qcow2 images (crypt_method ${header.cryptMethod}) are not supported`);
  }

  // Every table must be cluster-aligned and inside the file: a hostile header must not make a
  // reader allocate or seek far past what is there.
  const within = (offset: number, bytes: number, what: string): void => {
    if (offset % clusterSize !== 0) throw bad(`${what} offset ${offset} is not cluster-aligned`);
    if (offset + bytes > fileSize) throw bad(`${what} (${bytes} bytes at ${offset}) lies past the end of the ${fileSize}-byte file`);
  };
  if (header.l1Size * 8 > MAX_L1_BYTES) throw bad(`L1 table of ${header.l1Size} entries is over QEMU's ${MAX_L1_BYTES}-byte limit`);
  if (header.l1Size < l1EntriesFor(header.size, clusterBits)) {
    throw bad(`L1 table of ${header.l1Size} entries is too small for a ${header.size}-byte disk`);
  }
  // An L1 table cut off by the end of the file (a truncated image) still parses, for a check and
  // repair; opening the image checks it lies in the file before allocating it.
  if (header.l1Size > 0 && header.l1TableOffset % clusterSize !== 0) throw bad(`L1 table offset ${header.l1TableOffset} is not cluster-aligned`);
  if (header.refcountTableClusters === 0) throw bad("the refcount table is empty");
  if (header.refcountTableClusters * clusterSize > MAX_REFCOUNT_TABLE_BYTES) {
    throw bad(`refcount table of ${header.refcountTableClusters} clusters is over QEMU's ${MAX_REFCOUNT_TABLE_BYTES}-byte limit`);
  }
  // A refcount table cut off by the end of the file (a truncated image) is still a header: readers
  // do not need the table, a check reads what is left and a repair rebuilds it; writers refuse it.
  if (header.refcountTableOffset % clusterSize !== 0) throw bad(`refcount table offset ${header.refcountTableOffset} is not cluster-aligned`);
  if (header.nbSnapshots > 0) within(header.snapshotsOffset, 0, "snapshot table");

  const clusterEnd = Math.min(clusterSize, head.length);
  const backingOffset = u64(H_BACKING_FILE_OFFSET, "backing file offset");
  const backingSize = view.getUint32(H_BACKING_FILE_SIZE);
  if (backingOffset !== 0) {
    if (backingSize === 0 || backingSize > MAX_BACKING_NAME) throw bad(`backing file name length ${backingSize} is outside 1..${MAX_BACKING_NAME}`);
    if (backingOffset < header.headerLength || backingOffset + backingSize > clusterEnd) {
      throw bad("the backing file name does not lie in the first cluster after the header");
    }
    header.backingFile = new TextDecoder().decode(head.subarray(backingOffset, backingOffset + backingSize));
  }
  // As QEMU reads them: extensions run until the end marker, the backing file name or the cluster's end.
  parseExtensions(head, header, backingOffset !== 0 ? backingOffset : clusterEnd, bad);
  return header;
}

/** Refuses every incompatible feature tandem does not implement, naming it. */
function checkFeatures(header: Qcow2Header, name: string): void {
  const handled = Incompatible.Dirty | Incompatible.Corrupt | (header.compressionType === 0 ? Incompatible.CompressionType : 0n);
  const refused = header.incompatibleFeatures & ~handled;
  if (refused !== 0n) {
    const names: string[] = [];
    for (let bit = 0; bit < 64; bit++) {
      if ((refused >> BigInt(bit)) & 1n) names.push(INCOMPATIBLE_NAMES[bit] ?? `unknown bit ${bit}`);
    }
    const also = header.compressionType !== 0 ? ` (compression type ${header.compressionType}; only deflate is supported)` : "";
    throw new TandemError(ErrorCode.DiskUnsupported, `${name}: qcow2 incompatible feature${names.length > 1 ? "s" : ""} ${names.join(", ")}${also} not supported`);
  }
  if (header.compressionType !== 0) {
    throw new TandemError(ErrorCode.DiskFormat, `${name}: compression type ${header.compressionType} without the compression type feature bit`);
  }
}

/** Reads the extensions between the header and `limit`. Each length is checked before use. */
function parseExtensions(head: Uint8Array, header: Qcow2Header, limit: number, bad: (what: string) => TandemError): void {
  const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
  const seen = new Set<number>();
  // Each extension takes at least 8 bytes, so `limit` bounds the count.
  for (let at = header.headerLength; at < limit; ) {
    if (at + 8 > limit) throw bad(`a header extension at ${at} is cut off by the end of the first cluster`);
    const type = view.getUint32(at);
    const length = view.getUint32(at + 4);
    at += 8;
    if (type === Extension.End) return;
    const padded = Math.ceil(length / 8) * 8;
    if (length > limit - at) throw bad(`header extension 0x${type.toString(16)} of ${length} bytes runs past the first cluster`);
    if (seen.has(type)) throw bad(`header extension 0x${type.toString(16)} appears twice`);
    seen.add(type);
    const data = head.subarray(at, at + length);
    if (type === Extension.BackingFormat) header.backingFormat = new TextDecoder().decode(data);
    else if (type === Extension.ExternalDataFile || type === Extension.FullDiskEncryption) {
      throw new TandemError(ErrorCode.DiskUnsupported, `header extension 0x${type.toString(16)} (external data or encryption) is not supported`);
    } else if (type !== Extension.FeatureNameTable) header.unknownExtensions.push({ type, data: data.slice() });
    at += padded;
  }
}

/** The feature-name table tandem writes: the bits it knows, named as QEMU names them. */
const FEATURE_NAMES: [type: number, bit: number, name: string][] = [
  [0, 0, "dirty bit"],
  [0, 1, "corrupt bit"],
  [0, 2, "external data file"],
  [0, 3, "compression type"],
  [0, 4, "extended L2 entries"],
  [1, 0, "lazy refcounts"],
  [2, 0, "bitmaps"],
  [2, 1, "raw external data"],
];

/**
 * The first cluster's bytes for `header` (version 3): the header, the backing format extension,
 * the extensions kept from a parsed image, the feature-name table, the end marker, then the
 * backing file name. Fails with E_DISK_FORMAT if it does not fit in one cluster.
 */
export function serializeHeader(header: Qcow2Header): Uint8Array {
  const clusterSize = 2 ** header.clusterBits;
  const out = new Uint8Array(clusterSize);
  const view = new DataView(out.buffer);
  const headerLength = Math.max(header.headerLength, V3_HEADER_LENGTH);
  view.setUint32(H_MAGIC, QCOW2_MAGIC);
  view.setUint32(H_VERSION, 3);
  view.setUint32(H_CLUSTER_BITS, header.clusterBits);
  view.setBigUint64(H_SIZE, BigInt(header.size));
  view.setUint32(H_CRYPT_METHOD, 0);
  view.setUint32(H_L1_SIZE, header.l1Size);
  view.setBigUint64(H_L1_TABLE_OFFSET, BigInt(header.l1TableOffset));
  view.setBigUint64(H_REFCOUNT_TABLE_OFFSET, BigInt(header.refcountTableOffset));
  view.setUint32(H_REFCOUNT_TABLE_CLUSTERS, header.refcountTableClusters);
  view.setUint32(H_NB_SNAPSHOTS, header.nbSnapshots);
  view.setBigUint64(H_SNAPSHOTS_OFFSET, BigInt(header.snapshotsOffset));
  view.setBigUint64(H_INCOMPATIBLE_FEATURES, header.incompatibleFeatures);
  view.setBigUint64(H_COMPATIBLE_FEATURES, header.compatibleFeatures);
  view.setBigUint64(H_AUTOCLEAR_FEATURES, header.autoclearFeatures);
  view.setUint32(H_REFCOUNT_ORDER, header.refcountOrder);
  view.setUint32(H_HEADER_LENGTH, headerLength);
  out[H_COMPRESSION_TYPE] = header.compressionType;

  let at = headerLength;
  const put = (type: number, data: Uint8Array): void => {
    const padded = Math.ceil(data.length / 8) * 8;
    if (at + 8 + padded + 8 > clusterSize) {
      throw new TandemError(ErrorCode.DiskFormat, `the qcow2 header and its extensions do not fit in one ${clusterSize}-byte cluster`);
    }
    view.setUint32(at, type);
    view.setUint32(at + 4, data.length);
    out.set(data, at + 8);
    at += 8 + padded;
  };
  if (header.backingFormat !== undefined) put(Extension.BackingFormat, new TextEncoder().encode(header.backingFormat));
  for (const extension of header.unknownExtensions) put(extension.type, extension.data);
  const table = new Uint8Array(FEATURE_NAMES.length * FEATURE_NAME_ENTRY);
  FEATURE_NAMES.forEach(([type, bit, name], i) => {
    table[i * FEATURE_NAME_ENTRY] = type;
    table[i * FEATURE_NAME_ENTRY + 1] = bit;
    table.set(new TextEncoder().encode(name), i * FEATURE_NAME_ENTRY + 2);
  });
  // The feature-name table is a courtesy for tools; leave it out rather than fail on small clusters.
  if (at + 8 + table.length + 8 + backingBytes(header).length <= clusterSize) put(Extension.FeatureNameTable, table);
  at += 8; // the end marker: type 0, length 0, already zero

  const name = backingBytes(header);
  if (name.length > 0) {
    if (name.length > MAX_BACKING_NAME || at + name.length > clusterSize) {
      throw new TandemError(ErrorCode.DiskFormat, `backing file name of ${name.length} bytes does not fit in the qcow2 header cluster`);
    }
    out.set(name, at);
    view.setBigUint64(H_BACKING_FILE_OFFSET, BigInt(at));
    view.setUint32(H_BACKING_FILE_SIZE, name.length);
    at += name.length;
  }
  return out.subarray(0, at);
}

function backingBytes(header: Qcow2Header): Uint8Array {
  return header.backingFile === undefined ? new Uint8Array(0) : new TextEncoder().encode(header.backingFile);
}
