/**
 * CRC-32 as zlib computes it (IEEE 802.3: reflected polynomial 0xEDB88320, initial value and
 * final XOR 0xFFFFFFFF), for the cow header and the batch journal. `zlib.crc32` where the
 * runtime has it (Node 20.15+, Deno, Bun: about 20 times the table's speed); a byte-at-a-time
 * table otherwise, since tandem supports every Node 20. Both give the same numbers (tested).
 */

import * as zlib from "node:zlib";

type Crc32 = (bytes: Uint8Array, previous?: number) => number;

const native = (zlib as { crc32?: Crc32 }).crc32;

/** The CRC-32 of `bytes`, continuing from `previous`, the CRC of the bytes before them (0 for none). */
export const crc32: Crc32 = native !== undefined ? (bytes, previous = 0) => native(bytes, previous) : tableCrc32;

let table: Uint32Array | null = null;

/** The table version of {@link crc32}, exported so tests can compare the two. */
export function tableCrc32(bytes: Uint8Array, previous = 0): number {
  if (table === null) {
    table = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[n] = c >>> 0;
    }
  }
  let c = ~previous >>> 0;
  for (let i = 0; i < bytes.length; i++) c = table[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}
