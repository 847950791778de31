/**
 * The checkpoint stream's byte layout (docs/checkpoint-stream.md explains each field). Modelled on
 * Xen's migration stream v2 (xen docs/specs/libxc-migration-stream.pandoc): a versioned header,
 * then records {type u32, length u32, body} with bodies padded to 8 bytes. Little-endian.
 */

/** "TNDMSTRM": the first 8 bytes of every stream. */
export const MAGIC = Uint8Array.of(0x54, 0x4e, 0x44, 0x4d, 0x53, 0x54, 0x52, 0x4d);
/** The only version this tandem writes and reads. */
export const VERSION = 1;

/** Stream header: offsets of its fields. */
export const H_MAGIC = 0; //  u8[8]
export const H_VERSION = 8; // u32
export const H_PAGE_SIZE = 12; // u32
export const H_REGIONS = 16; // u32  number of region descriptors that follow
export const H_FLAGS = 20; // u32  HeaderFlag bits; a reader refuses any other
export const HEADER_SIZE = 24;

/** Header flags. A stream without them (all written before identities) reads as before. */
export const HeaderFlag = {
  /** An identity section follows the region descriptors: what the guest was built from. */
  Identity: 1,
} as const;
/** Every flag this tandem knows. */
export const KNOWN_FLAGS = HeaderFlag.Identity;

/** Region descriptor (one per guest memory region, in region-index order). */
export const R_SIZE = 0; // u64  bytes, a multiple of the page size
export const R_FLAGS = 8; // u32  none defined
export const R_RESERVED = 12; // u32 zero
export const REGION_SIZE = 16;
/** Regions a stream may describe. */
export const MAX_REGIONS = 64;

/**
 * Identity section (host/machine/guest-identity.ts): a head, then `count` fields, each a field
 * head, its name and value (UTF-8), zero-padded to 8. It sits right after the region descriptors.
 */
export const I_LENGTH = 0; // u32  bytes of the whole section, this head included; a multiple of 8
export const I_COUNT = 4; // u32  fields that follow, 0 to MAX_IDENTITY_FIELDS
export const IDENTITY_HEAD_SIZE = 8;
/** Identity field head: offsets. */
export const F_KIND = 0; // u8   IdentityKind
export const F_RESERVED = 1; // u8  zero
export const F_NAME_LENGTH = 2; // u16  1 to MAX_FIELD_NAME_BYTES
export const F_VALUE_LENGTH = 4; // u32  0 to MAX_FIELD_VALUE_BYTES
export const FIELD_HEAD_SIZE = 8;
/** Bounds on a peer's identity: a real one has a dozen short fields (a command line is the longest). */
export const MAX_IDENTITY_FIELDS = 64;
export const MAX_FIELD_NAME_BYTES = 64;
export const MAX_FIELD_VALUE_BYTES = 4096;
/** Identity field kinds: shown as it is, or a content digest (SHA-256, hex). */
export const IdentityKind = { value: 1, digest: 2 } as const;

/** Record header: offsets. */
export const REC_TYPE = 0; // u32
export const REC_LENGTH = 4; // u32  body bytes, not counting the padding to 8
export const RECORD_HEADER_SIZE = 8;
/** Bodies are padded with zero bytes to a multiple of this. */
export const RECORD_ALIGN = 8;

/** Record types. */
export const RecordType = {
  /** u32 region, u32 count, u32 pfn[count], zero pad to 8, then count full pages. */
  Pages: 1,
  /** u32 region, u32 count, u32 pfn[count]: pages that are all zero. */
  ZeroPages: 2,
  /** u32 region, u32 count, then count x { u32 pfn, u32 len, len delta bytes, zero pad to 4 }. */
  DeltaPages: 3,
  /** u32 device, u32 zero, then the device's state: opaque bytes from the emulator. */
  DeviceState: 4,
  /** u32 disk, u32 count, then count x { u64 offset, u32 len, u32 zero, len bytes, zero pad to 8 }. */
  DiskWrites: 5,
  /** u64 checkpoint number, u64 generation: the checkpoint is complete. */
  CheckpointEnd: 6,
  /**
   * u32 count, u32 zero, then count x { u64 seq, u16 channel name length, u16 zero, u32 len,
   * name bytes (UTF-8), data bytes, zero pad to 8 }: the epoch's outputs, released on commit.
   */
  Outputs: 7,
  /** Empty: the primary stops replicating on purpose; the standby must not take over. */
  End: 8,
  /** Empty: a migration's source has stopped for good; the destination takes over now. */
  Handover: 9,
  /**
   * u32 device, u32 zero, then the device's state as a delta against its state in the previous
   * checkpoint (host/protocol/device-delta.ts has the layout).
   */
  DeviceStateDelta: 10,
  /**
   * A background disk copy starts (docs/replication.md, "Disks"): u32 disk, u32 mode
   * ({@link DiskSyncMode}), u64 disk size, u8[16] lineage of the primary's image, u64 checkpoint
   * the copy starts from (mode Changes), u64 base size, u8[32] base identity (mode Overlay).
   */
  DiskSyncBegin: 11,
  /** Blocks of a background disk copy: the DISK_WRITES layout. */
  DiskSyncWrites: 12,
  /** Ranges of a background disk copy that read as zeros: u32 disk, u32 count, count x { u64 offset, u64 length }. */
  DiskSyncZeroes: 13,
  /** u32 disk, u32 zero: the background copy of the disk is complete. */
  DiskSyncDone: 14,
} as const;
/** One of {@link RecordType}. */
export type RecordType = (typeof RecordType)[keyof typeof RecordType];

/** What a background disk copy sends (DISK_SYNC_BEGIN's mode). */
export const DiskSyncMode = {
  /** Every range of the disk: what it holds, and zeros where it holds nothing. */
  Full: 0,
  /** Only what the image holds above a base both sides have (same identity and size). */
  Overlay: 1,
  /** Only the blocks changed since a checkpoint the standby holds (a rejoin). */
  Changes: 2,
} as const;
/** One of {@link DiskSyncMode}. */
export type DiskSyncMode = (typeof DiskSyncMode)[keyof typeof DiskSyncMode];

/** DISK_SYNC_BEGIN: offsets in its body. */
export const DSB_DISK = 0; // u32
export const DSB_MODE = 4; // u32
export const DSB_DISK_SIZE = 8; // u64
export const DSB_LINEAGE = 16; // u8[16]
export const DSB_SINCE = 32; // u64
export const DSB_BASE_SIZE = 40; // u64
export const DSB_BASE_IDENTITY = 48; // u8[32]
export const DSB_SIZE = 80;
/** Bytes of an image lineage (a random id the primary's change log gives its image). */
export const LINEAGE_BYTES = 16;
/** Bytes of a base image's identity (SHA-256). */
export const BASE_IDENTITY_BYTES = 32;

/** Names of the record types, for errors. */
export const RECORD_NAMES: Readonly<Record<number, string>> = Object.fromEntries(
  Object.entries(RecordType).map(([name, value]) => [value, name]),
);

/** What the header says about the guest. */
export interface StreamHeader {
  /** Bytes per page (4096 for every guest today). */
  pageSize: number;
  /** Guest memory regions, by index: their sizes in bytes. */
  regions: readonly { size: number }[];
  /** What the guest was built from (a GuestIdentity's fields); absent in streams without one. */
  identity?: readonly StreamIdentityField[];
}

/** One field of the identity section. */
export interface StreamIdentityField {
  name: string;
  kind: keyof typeof IdentityKind;
  value: string;
}

/** A parsed record. Byte fields are views into the bytes given to the reader. */
export type StreamRecord =
  | { type: "pages"; region: number; pfns: Uint32Array; data: Uint8Array }
  | { type: "zero-pages"; region: number; pfns: Uint32Array }
  | { type: "delta-pages"; region: number; pages: { pfn: number; delta: Uint8Array }[] }
  | { type: "device-state"; device: number; data: Uint8Array }
  | { type: "device-state-delta"; device: number; delta: Uint8Array }
  | { type: "disk-writes"; disk: number; writes: { offset: number; data: Uint8Array }[] }
  | { type: "checkpoint-end"; checkpoint: number; generation: number; lastSeq?: number }
  | { type: "outputs"; outputs: { seq: number; channel: string; data: Uint8Array }[] }
  | { type: "end" }
  | { type: "handover" }
  | {
    type: "disk-sync-begin"; disk: number; mode: DiskSyncMode; diskSize: number; lineage: Uint8Array; since: number;
    baseSize: number; baseIdentity: Uint8Array;
  }
  | { type: "disk-sync-writes"; disk: number; writes: { offset: number; data: Uint8Array }[] }
  | { type: "disk-sync-zeroes"; disk: number; ranges: { offset: number; length: number }[] }
  | { type: "disk-sync-done"; disk: number };

/** `n` rounded up to a multiple of `align`. Arithmetic, not bit masks: lengths reach 2^32. */
export function padTo(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}
