import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode, TandemError } from "../../host/errors.ts";
import { seededRandom } from "../../host/prng.ts";
import { DEVICE_PAGE_SIZE, DeviceStateEncoder, applyDeviceStateDelta } from "../../host/protocol/device-delta.ts";
import { PageDeltaCodec } from "../../host/protocol/page-delta.ts";
import { StreamReader } from "../../host/protocol/stream/reader.ts";
import { StreamWriter } from "../../host/protocol/stream/writer.ts";
import { errorCode } from "../support/errors.ts";
import { FLAVORS } from "../support/flavors.ts";

const test = suite("device state deltas: only the pages of the state that changed, exactly rebuilt on the other side");

const random = seededRandom(1842);
const bytes = (n: number) => Uint8Array.from({ length: n }, () => Math.floor(random() * 256));

test("a sequence of states (changed bytes, whole pages, growing, shrinking, unchanged) is rebuilt exactly from its deltas, in every kernel flavor", () => {
  for (const flavor of FLAVORS) {
    const encoder = new DeviceStateEncoder({ kernels: flavor });
    const codec = new PageDeltaCodec({ kernels: flavor });
    let state: Uint8Array = bytes(10 * DEVICE_PAGE_SIZE + 123);
    assert.is(encoder.encode(state), undefined, "the first state goes whole");
    let held: Uint8Array = state.slice();
    for (let step = 0; step < 60; step++) {
      const next = step % 7 === 3 ? bytes(Math.floor(random() * 14 * DEVICE_PAGE_SIZE)) : state.slice();
      if (step % 7 !== 3) {
        for (let k = Math.floor(random() * 5); k > 0; k--) next[Math.floor(random() * next.length)] ^= 1 + Math.floor(random() * 255);
        if (step % 5 === 0 && next.length >= DEVICE_PAGE_SIZE) next.set(bytes(DEVICE_PAGE_SIZE), Math.floor(random() * (next.length - DEVICE_PAGE_SIZE)));
      }
      const grown = step % 11 === 5 ? Uint8Array.from([...next, ...bytes(5000)]) : step % 11 === 8 ? next.slice(0, Math.max(0, next.length - 7000)) : next;
      const delta = encoder.encode(grown);
      held = delta ? applyDeviceStateDelta(held, delta, codec) : grown.slice();
      assert.equal(held, grown, `${flavor} step ${step}`);
      if (delta) assert.ok(delta.length < grown.length, "a delta is sent only when smaller");
      state = grown;
    }
    const unchanged = encoder.encode(state);
    assert.ok(unchanged && unchanged.length === 8, "an unchanged state is an empty delta");
  }
});

test("one changed byte in a megabyte costs a few bytes; reset() sends the next state whole", () => {
  const encoder = new DeviceStateEncoder();
  const state = bytes(1 << 20);
  encoder.encode(state);
  state[777_777] ^= 0x55;
  const delta = encoder.encode(state)!;
  assert.ok(delta.length <= 32, `${delta.length} bytes`);
  encoder.reset();
  assert.is(encoder.encode(state), undefined);
});

test("records: DEVICE_STATE_DELTA goes through the stream writer and reader", () => {
  const writer = new StreamWriter({ pageSize: 4096, regions: [{ size: 4096 }] });
  writer.writeHeader();
  writer.deviceStateDelta(0, Uint8Array.of(8, 0, 0, 0, 0, 0, 0, 0));
  writer.checkpointEnd(1, 1);
  const records = new StreamReader().read(writer.take());
  assert.equal(records[0], { type: "device-state-delta", device: 0, delta: Uint8Array.of(8, 0, 0, 0, 0, 0, 0, 0) });
});

test("a hostile delta is E_STREAM_FORMAT, never a crash; random damage gives nothing else", () => {
  const codec = new PageDeltaCodec();
  const base = bytes(3 * DEVICE_PAGE_SIZE);
  const encoder = new DeviceStateEncoder();
  encoder.encode(base);
  const next = base.slice();
  next[5000] ^= 1;
  next.set(bytes(DEVICE_PAGE_SIZE), 2 * DEVICE_PAGE_SIZE);
  const good = encoder.encode(next)!;
  assert.equal(applyDeviceStateDelta(base, good, codec), next);
  const head = (length: number, count: number, ...rest: number[]) => {
    const out = new Uint8Array(8 + rest.length * 4);
    const view = new DataView(out.buffer);
    view.setUint32(0, length, true);
    view.setUint32(4, count, true);
    rest.forEach((w, i) => view.setUint32(8 + i * 4, w, true));
    return out;
  };
  const cases: [string, Uint8Array][] = [
    ["too short", Uint8Array.of(1, 2, 3)],
    ["huge length", head(2 ** 31, 0)],
    ["entry past the end", head(4096, 1)],
    ["page past the state", head(4096, 1, 1, 0x80000000)],
    ["raw bytes past the state", head(100, 1, 0, (0x80000000 | 200) >>> 0, 0)],
    ["pages out of order", head(8192, 2, 1, 0x80000000, 0, 0x80000000)],
    ["trailing bytes", Uint8Array.from([...head(0, 0), 0, 0, 0, 0])],
  ];
  for (const [what, delta] of cases) assert.is(errorCode(() => applyDeviceStateDelta(base, delta, codec)), ErrorCode.StreamFormat, what);
  for (let run = 0; run < 500; run++) {
    const damaged = good.slice(0, Math.max(8, Math.floor(random() * (good.length + 1))));
    for (let flips = 1 + Math.floor(random() * 3); flips > 0; flips--) damaged[Math.floor(random() * damaged.length)] = Math.floor(random() * 256);
    try {
      applyDeviceStateDelta(base, damaged, codec);
    } catch (error) {
      if (!(error instanceof TandemError) || error.code !== ErrorCode.StreamFormat) assert.unreachable(`run ${run}: ${String(error)}`);
    }
  }
});

test.run();
