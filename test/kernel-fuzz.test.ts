import { suite } from "uvu";
import * as assert from "uvu/assert";
import { seededRandom } from "../host/prng.ts";
import { agree } from "./support/flavors.ts";

const test = suite("differential fuzz: every kernel flavor agrees on hostile input");
const RUNS = Number(globalThis.process?.env?.TANDEM_FUZZ ?? 300);

/** Random bytes, biased toward small values so that some headers and ULEBs look plausible. */
function garbage(random: () => number, n: number): number[] {
  return Array.from({ length: n }, () => (random() < 0.6 ? Math.floor(random() * 8) : Math.floor(random() * 256)));
}

test("frame decode: random streams, random cuts, random limits", () => {
  const random = seededRandom(111);
  for (let run = 0; run < RUNS; run++) {
    const input = garbage(random, 1 + Math.floor(random() * 300));
    // Layout: state (40 bytes) at 0, events at 64 (64 x 16), input at 2048.
    const bytes = new Uint8Array(4096);
    bytes.set(input, 2048);
    const maxEvents = 1 + Math.floor(random() * 64);
    const maxPayload = Math.floor(random() * 2000);
    const stopMask = Math.floor(random() * 256);
    const cut = Math.floor(random() * input.length);
    agree(bytes, (k) => {
      const first = k.frameDecode(0, 2048, cut, 64, maxEvents, maxPayload, stopMask);
      // Second call: events after the first call's (64 max), at most 32 more, so they stay below the input at 2048.
      const second = k.frameDecode(0, 2048 + cut, input.length - cut, 64 + 16 * 64, 1 + (first % 32), maxPayload, stopMask);
      return [first, second];
    }, `frame decode run ${run}`, { from: 0, to: 2048 });
  }
});

test("delta decode: random deltas against random pages never disagree or write outside the page", () => {
  const random = seededRandom(112);
  for (let run = 0; run < RUNS; run++) {
    const size = [16, 100, 4096][run % 3];
    const delta = garbage(random, Math.floor(random() * 64));
    const bytes = new Uint8Array(3 * 4096);
    for (let i = 0; i < size; i++) bytes[i] = Math.floor(random() * 256);
    bytes.fill(0xee, size, 4096);
    bytes.set(delta, 8192);
    const { heap } = agree(bytes, (k) => k.deltaDecode(0, size, 8192, delta.length), `delta decode run ${run}`);
    assert.ok(heap.u8.subarray(size, 4096).every((b) => b === 0xee), `run ${run}: nothing written past the page`);
  }
});

test.run();
