import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode } from "../host/errors.ts";
import { Cmd, FrameDecoder, HEADER_SIZE, cmdMask, type FrameSink } from "../host/protocol/frame.ts";
import { seededRandom } from "../host/prng.ts";
import { Heap } from "../host/wasm/heap.ts";
import { kernelsFor } from "../host/wasm/kernels.ts";
import { errorCode } from "./support/errors.ts";
import { FLAVORS, agree } from "./support/flavors.ts";

const test = suite("transaction frames: encode and incremental decode");

interface Frame {
  cmd: number;
  id: number;
  seq: number;
  payload: number[];
}

function randomFrames(random: () => number, count: number): Frame[] {
  return Array.from({ length: count }, () => {
    const size = random() < 0.3 ? 0 : random() < 0.9 ? Math.floor(random() * 5000) : Math.floor(random() * 70_000);
    return {
      cmd: Math.floor(random() * 8),
      id: Math.floor(random() * 65536),
      seq: Math.floor(random() * 2 ** 32),
      payload: Array.from({ length: size }, () => Math.floor(random() * 256)),
    };
  });
}

/** The frames' wire bytes, written by every flavor's frame_encode; asserts they all agree. */
function encodeAll(frames: Frame[]): Uint8Array {
  const total = frames.reduce((n, f) => n + HEADER_SIZE + f.payload.length, 0);
  const image = new Uint8Array(2 * total + 16);
  let src = total + 16; // payloads staged after the output area
  for (const f of frames) {
    image.set(f.payload, src);
    src += f.payload.length;
  }
  const { heap } = agree(image, (k) => {
    let out = 0;
    let from = total + 16;
    for (const f of frames) {
      out += k.frameEncode(out, f.cmd, f.id, f.seq, from, f.payload.length);
      from += f.payload.length;
    }
    return out;
  }, "encode");
  return heap.u8.slice(0, total);
}

/** Collects events into frames: payload pieces are concatenated. */
class Collector implements FrameSink {
  frames: Frame[] = [];
  events: string[] = [];
  constructor(readonly heap: Heap) {}
  header(cmd: number, id: number, seq: number, payloadLength: number): void {
    this.frames.push({ cmd, id, seq, payload: [] });
    this.events.push(`H${cmd}/${id}/${seq}/${payloadLength}`);
  }
  payload(offset: number, length: number): void {
    this.frames[this.frames.length - 1].payload.push(...this.heap.u8.subarray(offset, offset + length));
    this.events.push(`P${length}`);
  }
}

test("the header is little-endian on the wire, field by field", () => {
  const wire = encodeAll([{ cmd: 0x0102, id: 0x0304, seq: 0x05060708, payload: [0xaa, 0xbb, 0xcc] }]);
  assert.equal(Array.from(wire), [0x02, 0x01, 0x04, 0x03, 0x08, 0x07, 0x06, 0x05, 0x03, 0x00, 0x00, 0x00, 0xaa, 0xbb, 0xcc]);
});

test("a stream cut at random points decodes to the same frames, every flavor event for event", () => {
  for (let trial = 0; trial < 6; trial++) {
    const frames = randomFrames(seededRandom(60 + trial), 40);
    const wire = encodeAll(frames);
    const results = FLAVORS.map((flavor) => {
      const heap = Heap.create(wire.length + 65536);
      const input = heap.alloc(wire.length);
      heap.u8.set(wire, input);
      const sink = new Collector(heap);
      const random = seededRandom(900 + trial); // same cuts and event budgets for every flavor
      const decoder = new FrameDecoder(heap, kernelsFor(heap, flavor), { maxPayload: 1 << 20, maxEvents: 1 + Math.floor(random() * 8) });
      for (let at = 0; at < wire.length; ) {
        const size = random() < 0.5 ? 1 + Math.floor(random() * 16) : 1 + Math.floor(random() * 65536);
        const len = Math.min(size, wire.length - at);
        assert.is(decoder.decode(input + at, len, 0, sink), len, "no stop mask: everything consumed");
        at += len;
      }
      assert.not.ok(decoder.inHeader || decoder.inPayload, "ends on a frame boundary");
      return { flavor, sink };
    });
    for (const { flavor, sink } of results) {
      assert.equal(sink.frames, frames, `${flavor}: frames round-trip (trial ${trial})`);
      assert.equal(sink.events, results[0].sink.events, `${flavor}: same events as ${results[0].flavor}`);
    }
  }
});

test("a stream fed one byte at a time, and one cut inside a header, keeps state between calls", () => {
  const frames = randomFrames(seededRandom(70), 12).map((f) => ({ ...f, payload: f.payload.slice(0, 40) }));
  const wire = encodeAll(frames);
  for (const flavor of FLAVORS) {
    const heap = Heap.create(wire.length + 65536);
    const input = heap.alloc(wire.length);
    heap.u8.set(wire, input);
    const sink = new Collector(heap);
    const decoder = new FrameDecoder(heap, kernelsFor(heap, flavor), { maxPayload: 100 });
    for (let at = 0; at < wire.length; at++) {
      decoder.decode(input + at, 1, 0, sink);
      if (at === 5) assert.ok(decoder.inHeader, `${flavor}: 6 bytes in, the first header is incomplete`);
    }
    assert.equal(sink.frames, frames, flavor);
  }
});

test("decode stops right after a frame in the stop mask, and resumes from there", () => {
  const frames: Frame[] = [
    { cmd: Cmd.Begin, id: 1, seq: 0, payload: [] },
    { cmd: Cmd.Continue, id: 1, seq: 1, payload: [1, 2, 3] },
    { cmd: Cmd.Commit, id: 1, seq: 2, payload: [] },
    { cmd: Cmd.Atomic, id: 2, seq: 0, payload: [9, 9] },
    { cmd: Cmd.Begin, id: 3, seq: 0, payload: [] },
  ];
  const wire = encodeAll(frames);
  for (const flavor of FLAVORS) {
    const heap = Heap.create(65536);
    const input = heap.alloc(wire.length);
    heap.u8.set(wire, input);
    const sink = new Collector(heap);
    const decoder = new FrameDecoder(heap, kernelsFor(heap, flavor), { maxPayload: 100 });
    const stop = cmdMask(Cmd.Commit, Cmd.Atomic);
    const first = decoder.decode(input, wire.length, stop, sink);
    assert.is(first, 3 * HEADER_SIZE + 3, `${flavor}: stops after COMMIT`);
    assert.is(sink.frames.length, 3);
    const second = decoder.decode(input + first, wire.length - first, stop, sink);
    assert.is(second, HEADER_SIZE + 2, `${flavor}: stops after ATOMIC's payload`);
    const third = decoder.decode(input + first + second, wire.length - first - second, stop, sink);
    assert.is(first + second + third, wire.length);
    assert.equal(sink.frames, frames);
  }
});

test("a payload_len over the limit is E_PAYLOAD_TOO_LARGE, also when its header arrives in pieces", () => {
  const wire = encodeAll([{ cmd: Cmd.Continue, id: 0, seq: 0, payload: new Array(101).fill(7) }]);
  for (const flavor of FLAVORS) {
    for (const cut of [wire.length, 5]) {
      const heap = Heap.create(65536);
      const input = heap.alloc(wire.length);
      heap.u8.set(wire, input);
      const sink = new Collector(heap);
      const decoder = new FrameDecoder(heap, kernelsFor(heap, flavor), { maxPayload: 100 });
      const code = errorCode(() => {
        decoder.decode(input, cut, 0, sink);
        decoder.decode(input + cut, wire.length - cut, 0, sink);
      });
      assert.is(code, ErrorCode.PayloadTooLarge, `${flavor}, cut at ${cut}`);
      assert.equal(sink.events, [], "the oversized header is never reported");
    }
  }
});

test.run();
