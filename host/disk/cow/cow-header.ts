/**
 * The cow header: parse with every field validated against the file it came from (a hostile
 * image must fail cleanly, never make us allocate or read out of bounds), and build a new one.
 * Layout in cow-layout.ts and docs/cow-format.md.
 */

import { ErrorCode, TandemError } from "../../errors.ts";
import { readExact, type BlockFile } from "../block-file.ts";
import type { DiskCreateOptions } from "../format.ts";
import {
  BASE_FORMAT_BYTES,
  BLOCKS_PER_BYTE,
  COW_MAGIC,
  COW_VERSION,
  DEFAULT_BLOCK_BITS,
  H_BASE_FORMAT,
  H_BASE_NAME_LENGTH,
  H_BASE_NAME_OFFSET,
  H_BITMAP_LENGTH,
  H_BITMAP_OFFSET,
  H_BLOCK_BITS,
  H_CHECKSUM,
  H_DATA_OFFSET,
  H_FIXED_END,
  H_FLAGS,
  H_HEADER_SIZE,
  H_MAGIC,
  H_RESERVED,
  H_VERSION,
  H_VIRTUAL_SIZE,
  HEADER_SIZE,
  MAX_BASE_NAME_BYTES,
  MAX_BITMAP_BYTES,
  MAX_BLOCK_BITS,
  MAX_HEADER_SIZE,
  MIN_BLOCK_BITS,
  MIN_HEADER_SIZE,
} from "./cow-layout.ts";
import { crc32 } from "../crc32.ts";

/** A cow header, validated. */
export interface CowHeader {
  /** Bytes of the header area. */
  headerSize: number;
  /** log2 of the block size. */
  blockBits: number;
  /** The disk's size in bytes. */
  virtualSize: number;
  /** File offset of the bitmap. */
  bitmapOffset: number;
  /** Bitmap bytes: exactly enough for every block. */
  bitmapLength: number;
  /** File offset of block 0's data, a multiple of the block size. */
  dataOffset: number;
  /** The base image's name as recorded, or null for an overlay without a base. */
  baseName: string | null;
  /** The base image's format as recorded, or null to probe it. */
  baseFormat: string | null;
}

/** A base format name: what the registry's names look like. */
const FORMAT_NAME = /^[a-z0-9][a-z0-9_-]*$/;

/** Blocks of a disk of `size` bytes in blocks of 2^`blockBits` (the last may be partial). */
export function blockCount(size: number, blockBits: number): number {
  return Math.ceil(size / 2 ** blockBits);
}

/** Bitmap bytes for `blocks` blocks. */
export function bitmapBytes(blocks: number): number {
  return Math.ceil(blocks / BLOCKS_PER_BYTE);
}

/** Reads and validates the header of the cow image in `file`. */
export function parseCowHeader(file: BlockFile): CowHeader {
  const where = file.path;
  const fail = (message: string) => new TandemError(ErrorCode.DiskFormat, `${where}: ${message}`);
  const fileSize = file.size();
  if (fileSize < H_FIXED_END) throw fail(`${fileSize} bytes is too short for a cow header (${H_FIXED_END} bytes at least)`);
  const fixed = new Uint8Array(H_FIXED_END);
  readExact(file, 0, fixed, "the cow header");
  for (let i = 0; i < COW_MAGIC.length; i++) {
    if (fixed[H_MAGIC + i] !== COW_MAGIC[i]) throw fail("not a cow image (the magic is not TNDMCOW\\0)");
  }
  const fixedView = new DataView(fixed.buffer);
  const version = fixedView.getUint32(H_VERSION, true);
  if (version !== COW_VERSION) {
    throw new TandemError(ErrorCode.DiskUnsupported, `${where}: cow version ${version}; this tandem reads version ${COW_VERSION} only`);
  }
  const headerSize = fixedView.getUint32(H_HEADER_SIZE, true);
  if (headerSize < MIN_HEADER_SIZE || headerSize > MAX_HEADER_SIZE || headerSize % MIN_HEADER_SIZE !== 0) {
    throw fail(`header size ${headerSize} is not a multiple of ${MIN_HEADER_SIZE} from ${MIN_HEADER_SIZE} to ${MAX_HEADER_SIZE}`);
  }
  if (headerSize > fileSize) throw fail(`the ${headerSize}-byte header runs past the end of the ${fileSize}-byte file`);
  const bytes = new Uint8Array(headerSize);
  readExact(file, 0, bytes, "the cow header");
  const view = new DataView(bytes.buffer);
  const stored = view.getUint32(H_CHECKSUM, true);
  view.setUint32(H_CHECKSUM, 0, true);
  const computed = crc32(bytes);
  if (stored !== computed) {
    throw fail(`header checksum ${hex(stored)} does not match its contents (${hex(computed)}): the header is corrupt`);
  }

  const flags = view.getUint32(H_FLAGS, true);
  if (flags !== 0) throw new TandemError(ErrorCode.DiskUnsupported, `${where}: unknown cow feature flags ${hex(flags)}`);
  for (let i = H_RESERVED; i < H_FIXED_END; i++) {
    if (bytes[i] !== 0) throw fail(`reserved header byte ${i} is not zero`);
  }
  const blockBits = view.getUint32(H_BLOCK_BITS, true);
  if (blockBits < MIN_BLOCK_BITS || blockBits > MAX_BLOCK_BITS) {
    throw fail(`block bits ${blockBits} is outside ${MIN_BLOCK_BITS}..${MAX_BLOCK_BITS} (4 KiB to 1 MiB blocks)`);
  }
  const blockSize = 2 ** blockBits;
  const virtualSize = safeU64(view, H_VIRTUAL_SIZE, "virtual size", fail);
  const bitmapOffset = safeU64(view, H_BITMAP_OFFSET, "bitmap offset", fail);
  const bitmapLength = safeU64(view, H_BITMAP_LENGTH, "bitmap length", fail);
  const dataOffset = safeU64(view, H_DATA_OFFSET, "data offset", fail);

  const needed = bitmapBytes(blockCount(virtualSize, blockBits));
  if (needed > MAX_BITMAP_BYTES) {
    throw new TandemError(
      ErrorCode.DiskUnsupported,
      `${where}: a ${virtualSize}-byte disk in ${blockSize}-byte blocks needs a ${needed}-byte bitmap; tandem holds at most ${MAX_BITMAP_BYTES}`,
    );
  }
  if (bitmapLength !== needed) throw fail(`bitmap length ${bitmapLength} should be ${needed} for a ${virtualSize}-byte disk in ${blockSize}-byte blocks`);
  if (bitmapOffset < headerSize) throw fail(`bitmap offset ${bitmapOffset} lies inside the ${headerSize}-byte header`);
  if (bitmapOffset + bitmapLength > fileSize) {
    throw fail(`the bitmap (${bitmapLength} bytes at ${bitmapOffset}) runs past the end of the ${fileSize}-byte file`);
  }
  // The data area starts at the first block boundary after the bitmap, so a hostile offset
  // cannot send writes far past the end of the file.
  const expectedData = firstDataOffset(bitmapOffset + bitmapLength, blockSize);
  if (dataOffset !== expectedData) {
    throw fail(`data offset ${dataOffset} should be ${expectedData}, the first ${blockSize}-byte boundary after the bitmap`);
  }

  const nameOffset = view.getUint32(H_BASE_NAME_OFFSET, true);
  const nameLength = view.getUint32(H_BASE_NAME_LENGTH, true);
  let baseName: string | null = null;
  if (nameLength > 0) {
    if (nameLength > MAX_BASE_NAME_BYTES) throw fail(`base name length ${nameLength} is over ${MAX_BASE_NAME_BYTES} bytes`);
    if (nameOffset < H_FIXED_END || nameOffset + nameLength > headerSize) {
      throw fail(`the base name (${nameLength} bytes at ${nameOffset}) is not inside the header area ${H_FIXED_END}..${headerSize}`);
    }
    baseName = decodeBaseName(bytes.subarray(nameOffset, nameOffset + nameLength), fail);
  } else if (nameOffset !== 0) {
    throw fail(`base name offset ${nameOffset} is set but its length is 0`);
  }
  const baseFormat = decodeBaseFormat(bytes.subarray(H_BASE_FORMAT, H_BASE_FORMAT + BASE_FORMAT_BYTES), fail);
  if (baseFormat !== null && baseName === null) throw fail(`a base format '${baseFormat}' is recorded without a base name`);
  return { headerSize, blockBits, virtualSize, bitmapOffset, bitmapLength, dataOffset, baseName, baseFormat };
}

/** The header of a new image for `options` (validated: E_BAD_ARGUMENT names what to fix). */
export function newCowHeader(options: DiskCreateOptions, where: string): CowHeader {
  const bad = (message: string) => new TandemError(ErrorCode.BadArgument, `${where}: ${message}`);
  if (options.lazyRefcounts === true) throw new TandemError(ErrorCode.DiskUnsupported, `${where}: cow images have no refcounts, so no lazy refcounts`);
  let blockBits = DEFAULT_BLOCK_BITS;
  if (options.clusterSize !== undefined) {
    const size = options.clusterSize;
    blockBits = Math.log2(size);
    if (!Number.isInteger(blockBits) || blockBits < MIN_BLOCK_BITS || blockBits > MAX_BLOCK_BITS) {
      throw bad(`block size ${size} must be a power of two from ${2 ** MIN_BLOCK_BITS} to ${2 ** MAX_BLOCK_BITS}`);
    }
  }
  const virtualSize = options.size;
  if (!Number.isSafeInteger(virtualSize) || virtualSize < 0) throw bad(`size ${virtualSize} is not a whole number of bytes`);
  const bitmapLength = bitmapBytes(blockCount(virtualSize, blockBits));
  if (bitmapLength > MAX_BITMAP_BYTES) {
    throw bad(`a ${virtualSize}-byte disk needs more than ${MAX_BITMAP_BYTES} bytes of bitmap in ${2 ** blockBits}-byte blocks; choose larger blocks`);
  }
  const blockSize = 2 ** blockBits;
  const bitmapOffset = HEADER_SIZE;
  const dataOffset = firstDataOffset(bitmapOffset + bitmapLength, blockSize);
  if (!Number.isSafeInteger(dataOffset + virtualSize)) throw bad(`size ${virtualSize} is too large`);

  let baseName: string | null = null;
  let baseFormat: string | null = null;
  if (options.backingFile !== undefined) {
    baseName = options.backingFile;
    const length = new TextEncoder().encode(baseName).length;
    if (length === 0 || length > MAX_BASE_NAME_BYTES || baseName.includes("\0")) {
      throw bad(`base name must be 1 to ${MAX_BASE_NAME_BYTES} bytes of UTF-8 without NUL, not ${length} bytes`);
    }
  }
  if (options.backingFormat !== undefined) {
    if (baseName === null) throw bad("a base format needs a base file");
    if (!FORMAT_NAME.test(options.backingFormat) || options.backingFormat.length > BASE_FORMAT_BYTES) {
      throw bad(`base format '${options.backingFormat}' must be up to ${BASE_FORMAT_BYTES} characters a-z, 0-9, _ and -`);
    }
    baseFormat = options.backingFormat;
  }
  return { headerSize: HEADER_SIZE, blockBits, virtualSize, bitmapOffset, bitmapLength, dataOffset, baseName, baseFormat };
}

/** The header area of `header`, checksum included. */
export function serializeCowHeader(header: CowHeader): Uint8Array {
  const bytes = new Uint8Array(header.headerSize);
  const view = new DataView(bytes.buffer);
  bytes.set(COW_MAGIC, H_MAGIC);
  view.setUint32(H_VERSION, COW_VERSION, true);
  view.setUint32(H_HEADER_SIZE, header.headerSize, true);
  view.setUint32(H_FLAGS, 0, true);
  view.setUint32(H_BLOCK_BITS, header.blockBits, true);
  view.setBigUint64(H_VIRTUAL_SIZE, BigInt(header.virtualSize), true);
  view.setBigUint64(H_BITMAP_OFFSET, BigInt(header.bitmapOffset), true);
  view.setBigUint64(H_BITMAP_LENGTH, BigInt(header.bitmapLength), true);
  view.setBigUint64(H_DATA_OFFSET, BigInt(header.dataOffset), true);
  if (header.baseName !== null) {
    const name = new TextEncoder().encode(header.baseName);
    bytes.set(name, H_FIXED_END);
    view.setUint32(H_BASE_NAME_OFFSET, H_FIXED_END, true);
    view.setUint32(H_BASE_NAME_LENGTH, name.length, true);
  }
  if (header.baseFormat !== null) bytes.set(new TextEncoder().encode(header.baseFormat), H_BASE_FORMAT);
  view.setUint32(H_CHECKSUM, crc32(bytes), true);
  return bytes;
}

/** Where block 0's data lies: the first multiple of the block size at or after the bitmap's end. */
function firstDataOffset(bitmapEnd: number, blockSize: number): number {
  return Math.ceil(bitmapEnd / blockSize) * blockSize;
}

function safeU64(view: DataView, at: number, what: string, fail: (message: string) => TandemError): number {
  const value = view.getBigUint64(at, true);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw fail(`${what} ${value} is past 2^53`);
  return Number(value);
}

function decodeBaseName(raw: Uint8Array, fail: (message: string) => TandemError): string {
  if (raw.includes(0)) throw fail("the base name contains a NUL byte");
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(raw);
  } catch {
    throw fail("the base name is not valid UTF-8");
  }
}

function decodeBaseFormat(raw: Uint8Array, fail: (message: string) => TandemError): string | null {
  const end = raw.indexOf(0) === -1 ? raw.length : raw.indexOf(0);
  if (raw.subarray(end).some((b) => b !== 0)) throw fail("the base format field has bytes after its NUL padding");
  if (end === 0) return null;
  const name = String.fromCharCode(...raw.subarray(0, end));
  if (!FORMAT_NAME.test(name)) throw fail(`the base format '${name.replace(/[^\x20-\x7e]/g, "?")}' is not a format name`);
  return name;
}

function hex(value: number): string {
  return `0x${value.toString(16).padStart(8, "0")}`;
}
