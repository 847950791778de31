import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode } from "../host/errors.ts";
import { geometry } from "../host/disk/qcow2/header.ts";
import { readRefcount, refcountPosition, writeRefcount } from "../host/disk/qcow2/refcount-entry.ts";
import { seededRandom } from "../host/prng.ts";
import { errorCode } from "./support/errors.ts";

const test = suite("qcow2 refcount entries: every width round-trips and leaves neighbours alone");
const BLOCK = 512;
const WIDTHS = [1, 2, 4, 8, 16, 32, 64];

function maxOf(bits: number): number {
  return bits === 64 ? Number.MAX_SAFE_INTEGER : 2 ** bits - 1;
}

test("known layouts: sub-byte entries start at bit 0, wide ones are big-endian", () => {
  const block = new Uint8Array(16);
  writeRefcount(block, 0, 1, 1);
  writeRefcount(block, 3, 1, 1);
  assert.is(block[0], 0b1001);
  writeRefcount(block, 5, 2, 3); // bits 10..11 -> byte 1, bits 2..3
  assert.is(block[1], 0b1100);
  writeRefcount(block, 1, 4, 0xa); // high nibble of byte 0
  assert.is(block[0], 0xa9);
  const wide = new Uint8Array(16);
  writeRefcount(wide, 1, 16, 0x1234);
  assert.equal(Array.from(wide.subarray(2, 4)), [0x12, 0x34]);
  writeRefcount(wide, 1, 32, 0xdeadbeef);
  assert.equal(Array.from(wide.subarray(4, 8)), [0xde, 0xad, 0xbe, 0xef]);
  writeRefcount(wide, 1, 64, 2 ** 40 + 7);
  assert.equal(Array.from(wide.subarray(8, 16)), [0, 0, 1, 0, 0, 0, 0, 7]);
  assert.is(readRefcount(wide, 1, 64), 2 ** 40 + 7);
});

test("random values round-trip for every width, and a shadow model agrees with every entry", () => {
  const random = seededRandom(0x5eed);
  for (const bits of WIDTHS) {
    const entries = (BLOCK * 8) / bits;
    const block = new Uint8Array(BLOCK);
    const shadow = new Array<number>(entries).fill(0);
    for (let i = 0; i < 2000; i++) {
      const index = Math.floor(random() * entries);
      const pick = random();
      const value = pick < 0.2 ? maxOf(bits) : pick < 0.3 ? 0 : Math.floor(random() * (maxOf(bits) + 1));
      writeRefcount(block, index, bits, value);
      shadow[index] = value;
      assert.is(readRefcount(block, index, bits), value, `width ${bits} entry ${index}`);
    }
    for (let index = 0; index < entries; index++) assert.is(readRefcount(block, index, bits), shadow[index], `width ${bits} entry ${index} at the end`);
  }
});

test("writing the maximum or zero into one entry leaves both neighbours untouched", () => {
  for (const bits of WIDTHS) {
    const entries = (BLOCK * 8) / bits;
    for (const index of [0, 1, 7, entries - 2, entries - 1]) {
      for (const background of [0, maxOf(bits)]) {
        const block = new Uint8Array(BLOCK);
        for (let i = 0; i < entries; i++) writeRefcount(block, i, bits, background);
        const value = background === 0 ? maxOf(bits) : 0;
        writeRefcount(block, index, bits, value);
        for (let i = 0; i < entries; i++) assert.is(readRefcount(block, i, bits), i === index ? value : background, `width ${bits} entry ${i}`);
      }
    }
  }
});

test("values that do not fit are refused, never wrapped", () => {
  const block = new Uint8Array(BLOCK);
  for (const bits of WIDTHS) {
    assert.is(errorCode(() => writeRefcount(block, 0, bits, maxOf(bits) + 1)), ErrorCode.OutOfRange, `width ${bits}`);
    assert.is(errorCode(() => writeRefcount(block, 0, bits, -1)), ErrorCode.OutOfRange);
    assert.is(errorCode(() => writeRefcount(block, 0, bits, 0.5)), ErrorCode.OutOfRange);
  }
  assert.ok(block.every((b) => b === 0));
});

test("a 64-bit entry above 2^53 - 1 is a format error on read", () => {
  const block = new Uint8Array(16);
  block[8] = 0x00;
  block[9] = 0x20; // 2^53
  assert.is(errorCode(() => readRefcount(block, 1, 64)), ErrorCode.DiskFormat);
  block.fill(0xff, 0, 8);
  assert.is(errorCode(() => readRefcount(block, 0, 64)), ErrorCode.DiskFormat);
  block.fill(0, 0, 8);
  block[1] = 0x1f;
  block.fill(0xff, 2, 8);
  assert.is(readRefcount(block, 0, 64), Number.MAX_SAFE_INTEGER);
});

test("position: table index and block index from the cluster number, past 2^32 too", () => {
  const g = geometry({ clusterBits: 16, refcountOrder: 4 });
  assert.equal(refcountPosition(0, g), { tableIndex: 0, blockIndex: 0 });
  assert.equal(refcountPosition(32767, g), { tableIndex: 0, blockIndex: 32767 });
  assert.equal(refcountPosition(32768, g), { tableIndex: 1, blockIndex: 0 });
  assert.equal(refcountPosition(2 ** 35 + 5, g), { tableIndex: 2 ** 20, blockIndex: 5 });
  const tiny = geometry({ clusterBits: 9, refcountOrder: 6 });
  assert.equal(refcountPosition(130, tiny), { tableIndex: 2, blockIndex: 2 });
});

test.run();
