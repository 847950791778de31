import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode } from "../../host/errors.ts";
import { encodeFrame, FrameStreamDecoder, MAX_FRAME_SIZE, MIN_FRAME_SIZE } from "../../host/net/frame-stream.ts";
import { seededRandom } from "../../host/prng.ts";
import { bytesEqual } from "../support/flavors.ts";
import { errorCode } from "../support/errors.ts";

const test = suite("network frame stream (QEMU's stream framing)");

function frame(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = (i * 7 + seed) & 255;
  return bytes;
}

test("a frame is its length, big-endian, then its bytes", () => {
  const encoded = encodeFrame(frame(60, 1));
  assert.equal([...encoded.subarray(0, 4)], [0, 0, 0, 60]);
  assert.ok(bytesEqual(encoded.subarray(4), frame(60, 1)));
});

test("frames come out whole whatever the chunk boundaries", () => {
  const random = seededRandom(7);
  const below = (n: number) => Math.floor(random() * n);
  const frames = Array.from({ length: 200 }, (_, i) => frame(MIN_FRAME_SIZE + below(1500), i));
  const stream = new Uint8Array(frames.reduce((n, f) => n + 4 + f.length, 0));
  let at = 0;
  for (const f of frames) {
    stream.set(encodeFrame(f), at);
    at += 4 + f.length;
  }
  for (const chunkMax of [1, 3, 5, 64, 1514, 100_000]) {
    const decoder = new FrameStreamDecoder();
    const out: Uint8Array[] = [];
    for (let pos = 0; pos < stream.length;) {
      const size = 1 + below(chunkMax);
      out.push(...decoder.push(stream.subarray(pos, pos + size)));
      pos += size;
    }
    assert.is(out.length, frames.length, `chunks of up to ${chunkMax}`);
    for (const [i, f] of frames.entries()) assert.ok(bytesEqual(out[i], f), `frame ${i}, chunks of up to ${chunkMax}`);
    assert.is(decoder.pending, 0);
  }
});

test("a length a frame cannot have breaks the stream for good, with a code", () => {
  for (const bad of [0, MIN_FRAME_SIZE - 1, MAX_FRAME_SIZE + 1, 0xffffffff]) {
    const decoder = new FrameStreamDecoder();
    const prefix = new Uint8Array(4);
    new DataView(prefix.buffer).setUint32(0, bad, false);
    assert.is(errorCode(() => decoder.push(prefix)), ErrorCode.NetFrame);
    assert.is(errorCode(() => decoder.push(encodeFrame(frame(60, 0)))), ErrorCode.NetFrame);
  }
});

test("frames too short or too long are refused before they are sent", () => {
  assert.is(errorCode(() => encodeFrame(new Uint8Array(MIN_FRAME_SIZE - 1))), ErrorCode.BadArgument);
  assert.is(errorCode(() => encodeFrame(new Uint8Array(MAX_FRAME_SIZE + 1))), ErrorCode.BadArgument);
});

test.run();
