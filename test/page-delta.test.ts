import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode } from "../host/errors.ts";
import { PageDeltaCodec } from "../host/protocol/page-delta.ts";
import { seededRandom } from "../host/prng.ts";
import { DELTA_TOO_LARGE } from "../host/wasm/kernels.ts";
import { errorCode } from "./support/errors.ts";
import { FLAVORS, agree } from "./support/flavors.ts";

const test = suite("page deltas: encode and decode equal the twin and round-trip");
const PAGE = 4096;

/** Variations of a page: every shape of change the encoder has a branch for. */
function variants(random: () => number): [string, (page: Uint8Array) => void][] {
  const flip = (page: Uint8Array, at: number, len: number) => {
    for (let i = at; i < Math.min(PAGE, at + len); i++) page[i] ^= 1 + Math.floor(random() * 255);
  };
  return [
    ["unchanged", () => {}],
    ["first byte", (p) => flip(p, 0, 1)],
    ["last byte", (p) => flip(p, PAGE - 1, 1)],
    ["1% scattered", (p) => { for (let i = 0; i < 41; i++) flip(p, Math.floor(random() * PAGE), 1); }],
    ["runs across 16-byte lanes", (p) => { flip(p, 15, 2); flip(p, 31, 34); flip(p, 100, 1); }],
    ["long runs (2-byte ULEB lengths)", (p) => { flip(p, 300, 200); flip(p, 2000, 1000); }],
    ["half", (p) => { for (let i = 0; i < PAGE; i += 2) flip(p, i, 1); }],
    ["everything", (p) => flip(p, 0, PAGE)],
  ];
}

function image(prev: Uint8Array, next: Uint8Array, delta: Uint8Array = new Uint8Array(0)): Uint8Array {
  const bytes = new Uint8Array(4 * PAGE + 64);
  bytes.set(prev, 0);
  bytes.set(next, PAGE);
  bytes.set(delta, 2 * PAGE);
  return bytes;
}

test("a known vector: three bytes changed at offset 1001", () => {
  const prev = new Uint8Array(PAGE);
  const next = prev.slice();
  next.set([1, 2, 3], 1001);
  const { result, heap } = agree(image(prev, next), (k) => k.deltaEncode(0, PAGE, PAGE, 2 * PAGE, PAGE), "known vector");
  assert.is(result, 6);
  assert.equal(Array.from(heap.u8.subarray(2 * PAGE, 2 * PAGE + 6)), [0xe9, 0x07, 0x03, 1, 2, 3]);
});

test("every shape of change: flavors agree and decoding the delta over prev gives next", () => {
  const random = seededRandom(81);
  for (let trial = 0; trial < 4; trial++) {
    for (const [name, change] of variants(random)) {
      const prev = Uint8Array.from({ length: PAGE }, () => (random() < 0.5 ? 0 : Math.floor(random() * 256)));
      const next = prev.slice();
      change(next);
      const enc = agree(image(prev, next), (k) => k.deltaEncode(0, PAGE, PAGE, 2 * PAGE, 2 * PAGE), `encode ${name}`);
      assert.ok(enc.result !== DELTA_TOO_LARGE, name);
      const delta = enc.heap.u8.slice(2 * PAGE, 2 * PAGE + enc.result);
      const dec = agree(image(prev, next, delta), (k) => k.deltaDecode(0, PAGE, 2 * PAGE, delta.length), `decode ${name}`);
      assert.is(dec.result, 0, name);
      assert.equal(dec.heap.u8.subarray(0, PAGE), next, `${name}: round trip`);
      if (name === "unchanged") assert.is(delta.length, 0);
    }
  }
});

test("the limit: a delta one byte over it is DELTA_TOO_LARGE, at it is written", () => {
  const prev = new Uint8Array(PAGE);
  const next = prev.slice();
  next.set([9, 9, 9, 9], 50); // zrun 50 (1 byte), nzrun 4 (1 byte), 4 bytes = 6
  assert.is(agree(image(prev, next), (k) => k.deltaEncode(0, PAGE, PAGE, 2 * PAGE, 6), "at the limit").result, 6);
  assert.is(agree(image(prev, next), (k) => k.deltaEncode(0, PAGE, PAGE, 2 * PAGE, 5), "over the limit").result, DELTA_TOO_LARGE);
});

test("hostile deltas: malformed is refused, flavors agree, nothing outside the page is written", () => {
  const random = seededRandom(82);
  const crafted: [string, number[]][] = [
    ["zrun past the page", [0x81, 0x20, 0x01, 7]], // zrun 4097
    ["nzrun past the page", [0xff, 0x1f, 0x02, 1, 2]], // zrun 4095, nzrun 2
    ["nzrun past the delta", [0x00, 0x05, 1, 2]],
    ["overlong ULEB", [0x80, 0x80, 0x80, 0x01, 0x01, 1]],
    ["ULEB cut off", [0x80]],
    ["nzrun missing", [0x05]],
  ];
  for (let i = 0; i < 300; i++) crafted.push([`random ${i}`, Array.from({ length: 1 + Math.floor(random() * 40) }, () => Math.floor(random() * 256))]);
  for (const [name, delta] of crafted) {
    const prev = new Uint8Array(PAGE).fill(0x11);
    const bytes = image(prev, new Uint8Array(PAGE).fill(0xee), Uint8Array.from(delta));
    const { result, heap } = agree(bytes, (k) => k.deltaDecode(0, PAGE, 2 * PAGE, delta.length), name);
    if (!name.startsWith("random")) assert.is(result, 1, `${name} is malformed`);
    assert.ok(heap.u8.subarray(PAGE, 2 * PAGE).every((b) => b === 0xee), `${name}: the bytes after the page are untouched`);
  }
});

test("the codec: encode, apply, fall back to the full page, refuse bad input with codes", () => {
  const random = seededRandom(83);
  for (const flavor of FLAVORS) {
    const codec = new PageDeltaCodec({ kernels: flavor });
    const prev = Uint8Array.from({ length: PAGE }, () => Math.floor(random() * 256));
    const next = prev.slice();
    next[7] ^= 0xff;
    const delta = codec.encode(prev, next)!;
    assert.ok(delta.length < 10, `${flavor}: a one-byte change is a tiny delta`);
    const page = prev.slice();
    codec.apply(page, delta);
    assert.equal(page, next);
    assert.is(codec.encode(prev, prev.map((b) => b ^ 0xff)), undefined, "a page that changed everywhere goes whole");
    const before = prev.slice();
    assert.is(errorCode(() => codec.apply(before, Uint8Array.of(0x81, 0x20, 0x01, 7))), ErrorCode.StreamFormat);
    assert.equal(before, prev, "a malformed delta leaves the page as it was");
    assert.is(errorCode(() => codec.encode(prev, new Uint8Array(10))), ErrorCode.BadArgument);
  }
});

test.run();
