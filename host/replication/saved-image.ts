/**
 * Checksums of a saved image (docs/checkpoint-stream.md, "Saved images"). A saved image is the
 * checkpoint stream of one whole checkpoint followed by a trailer holding the CRC-32C of each of
 * its parts: the stream header, then every record in order. Restore checks them all before
 * applying anything and names the first damaged part. Files at rest can rot or be cut short
 * unnoticed; the live stream needs none of this (the same document says why).
 *
 * Trailer layout, little-endian, after the stream's END record:
 *
 *   u32 crc[count]      CRC-32C of the header (crc[0]) and of each record, header and padding included
 *   u32 headerLength    bytes of the stream header (the first part)
 *   u32 count           parts: 1 + the number of records
 *   u32 trailerCrc      CRC-32C of the trailer up to here (crc table, headerLength, count)
 *   u8  magic[8]        "TDMSUMS1"
 */

import { crc32c } from "../disk/crc32.ts";
import { ErrorCode, TandemError } from "../errors.ts";
import { padTo, RECORD_ALIGN, RECORD_HEADER_SIZE, RECORD_NAMES, REC_LENGTH, REC_TYPE } from "../protocol/stream/format.ts";

/** The trailer's last eight bytes. */
export const TRAILER_MAGIC = new TextEncoder().encode("TDMSUMS1");
/** The trailer's fixed tail after the crc table: headerLength, count, trailerCrc, magic. */
const T_HEADER_LENGTH = 0;
const T_COUNT = 4;
const T_TRAILER_CRC = 8;
const T_MAGIC = 12;
const TAIL_SIZE = 20;
/** More parts than this is not an image tandem wrote (a page record holds many pages). */
const MAX_PARTS = 1 << 24;

/** Where each part of `stream` lies: [start, end) of the header, then of each record. Throws on a record that runs past the end. */
function parts(stream: Uint8Array, headerLength: number, what: string): [number, number][] {
  const view = new DataView(stream.buffer, stream.byteOffset, stream.byteLength);
  const found: [number, number][] = [[0, headerLength]];
  for (let at = headerLength; at < stream.length;) {
    if (at + RECORD_HEADER_SIZE > stream.length || found.length >= MAX_PARTS) {
      throw new TandemError(ErrorCode.StreamFormat, `${what}: record ${found.length} at byte ${at} is cut short`);
    }
    const end = at + RECORD_HEADER_SIZE + padTo(view.getUint32(at + REC_LENGTH, true), RECORD_ALIGN);
    if (end > stream.length) {
      const type = view.getUint32(at + REC_TYPE, true);
      throw new TandemError(ErrorCode.StreamFormat, `${what}: record ${found.length} (${RECORD_NAMES[type] ?? `type ${type}`}) at byte ${at} runs past the stream's end: damaged or cut short`);
    }
    found.push([at, end]);
    at = end;
  }
  return found;
}

/** `stream` (a whole checkpoint stream whose header is `headerLength` bytes) with its checksum trailer. */
export function withChecksums(stream: Uint8Array, headerLength: number): Uint8Array {
  const spans = parts(stream, headerLength, "image");
  const trailer = new Uint8Array(spans.length * 4 + TAIL_SIZE);
  const view = new DataView(trailer.buffer);
  spans.forEach(([start, end], i) => view.setUint32(i * 4, crc32c(stream.subarray(start, end)), true));
  const tail = spans.length * 4;
  view.setUint32(tail + T_HEADER_LENGTH, headerLength, true);
  view.setUint32(tail + T_COUNT, spans.length, true);
  view.setUint32(tail + T_TRAILER_CRC, crc32c(trailer.subarray(0, tail + T_TRAILER_CRC)), true);
  trailer.set(TRAILER_MAGIC, tail + T_MAGIC);
  const image = new Uint8Array(stream.length + trailer.length);
  image.set(stream);
  image.set(trailer, stream.length);
  return image;
}

/**
 * The checkpoint stream inside the saved image `image` (named `what` in errors), once every
 * part's checksum matched. E_STREAM_FORMAT names the damaged part: the header, or record N with
 * its type and byte offset.
 */
export function checkedStream(image: Uint8Array, what: string): Uint8Array {
  const magicAt = image.length - TRAILER_MAGIC.length;
  if (magicAt < 0 || !TRAILER_MAGIC.every((b, i) => image[magicAt + i] === b)) {
    throw new TandemError(ErrorCode.StreamFormat, `${what} has no checksums at its end: it is cut short, not a saved image, or saved by a tandem without them`);
  }
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const tailAt = image.length - TAIL_SIZE;
  const count = view.getUint32(tailAt + T_COUNT, true);
  const headerLength = view.getUint32(tailAt + T_HEADER_LENGTH, true);
  const tableAt = tailAt - count * 4;
  if (count < 1 || count > MAX_PARTS || tableAt < headerLength) throw new TandemError(ErrorCode.StreamFormat, `${what}: its checksum table is damaged`);
  if (crc32c(image.subarray(tableAt, tailAt + T_TRAILER_CRC)) !== view.getUint32(tailAt + T_TRAILER_CRC, true)) {
    throw new TandemError(ErrorCode.StreamFormat, `${what}: its checksum table is damaged`);
  }
  const stream = image.subarray(0, tableAt);
  const spans = parts(stream, headerLength, what);
  if (spans.length !== count) throw new TandemError(ErrorCode.StreamFormat, `${what} holds ${spans.length - 1} records where its checksums count ${count - 1}: damaged`);
  spans.forEach(([start, end], i) => {
    if (crc32c(stream.subarray(start, end)) === view.getUint32(tableAt + i * 4, true)) return;
    if (i === 0) throw new TandemError(ErrorCode.StreamFormat, `${what}: the stream header (bytes 0 to ${end}) is damaged: its checksum does not match`);
    const type = view.getUint32(start + REC_TYPE, true);
    throw new TandemError(ErrorCode.StreamFormat, `${what}: record ${i} (${RECORD_NAMES[type] ?? `type ${type}`}) at byte ${start} is damaged: its checksum does not match`);
  });
  return stream;
}
