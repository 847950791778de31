import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode, TandemError } from "../host/errors.ts";
import { HEADER_SIZE, RECORD_HEADER_SIZE, type StreamRecord } from "../host/protocol/stream/format.ts";
import { StreamReader } from "../host/protocol/stream/reader.ts";
import { StreamWriter } from "../host/protocol/stream/writer.ts";
import { seededRandom } from "../host/prng.ts";
import { concat } from "./support/bytes.ts";
import { errorCode } from "./support/errors.ts";

const test = suite("the checkpoint stream format");
const PAGE = 4096;
const header = { pageSize: PAGE, regions: [{ size: 64 * PAGE }, { size: 8 * PAGE }] };

function page(pfn: number): Uint8Array {
  return new Uint8Array(PAGE).fill(pfn & 0xff);
}

/** A stream with every record type; returns its bytes and what a reader must find. */
function sample(): { bytes: Uint8Array; records: StreamRecord[] } {
  const w = new StreamWriter(header);
  w.writeHeader();
  w.pages(0, [3, 0, 63], page);
  w.zeroPages(1, [7, 1]);
  w.deltaPages(0, [{ pfn: 5, delta: Uint8Array.of(1, 2, 9) }, { pfn: 6, delta: new Uint8Array(0) }]);
  w.deviceState(2, Uint8Array.of(10, 20, 30, 40, 50));
  w.diskWrites(0, [{ offset: 2 ** 40 + 512, data: new Uint8Array(513).fill(4) }, { offset: 0, data: new Uint8Array(0) }]);
  w.outputs([{ seq: 41, channel: "serial0", data: Uint8Array.of(104, 105, 10) }, { seq: 42, channel: "net0", data: new Uint8Array(0) }]);
  w.checkpointEnd(17, 3);
  w.end();
  const records: StreamRecord[] = [
    { type: "pages", region: 0, pfns: Uint32Array.of(3, 0, 63), data: concat([page(3), page(0), page(63)]) },
    { type: "zero-pages", region: 1, pfns: Uint32Array.of(7, 1) },
    { type: "delta-pages", region: 0, pages: [{ pfn: 5, delta: Uint8Array.of(1, 2, 9) }, { pfn: 6, delta: new Uint8Array(0) }] },
    { type: "device-state", device: 2, data: Uint8Array.of(10, 20, 30, 40, 50) },
    { type: "disk-writes", disk: 0, writes: [{ offset: 2 ** 40 + 512, data: new Uint8Array(513).fill(4) }, { offset: 0, data: new Uint8Array(0) }] },
    { type: "outputs", outputs: [{ seq: 41, channel: "serial0", data: Uint8Array.of(104, 105, 10) }, { seq: 42, channel: "net0", data: new Uint8Array(0) }] },
    { type: "checkpoint-end", checkpoint: 17, generation: 3 },
    { type: "end" },
  ];
  return { bytes: w.take(), records };
}

/** Comparable form: typed arrays as plain arrays. */
function plain(records: StreamRecord[]): unknown {
  return JSON.parse(JSON.stringify(records, (_k, v) => (ArrayBuffer.isView(v) ? Array.from(v as Uint8Array) : v)));
}

test("every record type round-trips; records are 8-byte aligned; the header is read once", () => {
  const { bytes, records } = sample();
  assert.is(bytes.length % 8, 0);
  const reader = new StreamReader();
  assert.equal(plain(reader.read(bytes)), plain(records));
  assert.equal(reader.header, header);
  // Later transactions carry records only.
  const w = new StreamWriter(header);
  w.checkpointEnd(18, 3);
  assert.equal(plain(reader.read(w.take())), [{ type: "checkpoint-end", checkpoint: 18, generation: 3 }]);
});

test("the header's bytes, field by field", () => {
  const w = new StreamWriter({ pageSize: PAGE, regions: [{ size: 2 ** 33 }] });
  w.writeHeader();
  const b = w.take();
  assert.equal(Array.from(b.subarray(0, 8)), Array.from(new TextEncoder().encode("TNDMSTRM")));
  assert.equal(Array.from(b.subarray(8, 24)), [1, 0, 0, 0, 0, 0x10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
  assert.equal(Array.from(b.subarray(24, 40)), [0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
});

test("a wrong magic, version or flag is E_STREAM_VERSION", () => {
  const { bytes } = sample();
  // Bit 0 of the flags is the identity section's; any other bit is unknown.
  for (const [at, value] of [[0, 0x55], [8, 2], [20, 2], [23, 0x80]]) {
    const bad = bytes.slice();
    bad[at] = value;
    assert.is(errorCode(() => new StreamReader().read(bad)), ErrorCode.StreamVersion, `byte ${at} = ${value}`);
  }
});

test("an unknown record type is E_STREAM_RECORD", () => {
  const { bytes } = sample();
  const bad = bytes.slice();
  const first = HEADER_SIZE + 2 * 16;
  bad[first] = 99;
  assert.is(errorCode(() => new StreamReader().read(bad)), ErrorCode.StreamRecord);
});

test("every cut of the stream parses to whole records or fails with E_STREAM_FORMAT", () => {
  const { bytes } = sample();
  for (let cut = 0; cut < bytes.length; cut++) {
    const code = errorCode(() => new StreamReader().read(bytes.subarray(0, cut)));
    assert.ok(code === undefined || code === ErrorCode.StreamFormat, `cut ${cut}: ${code}`);
    if (cut > 0 && cut < HEADER_SIZE + 32) assert.is(code, ErrorCode.StreamFormat, `cut ${cut} inside the header`);
  }
});

test("inconsistent records are E_STREAM_FORMAT", () => {
  const make = (edit: (w: StreamWriter) => void, patch: (b: Uint8Array, v: DataView) => void) => {
    const w = new StreamWriter(header);
    w.writeHeader();
    edit(w);
    const b = w.take();
    patch(b, new DataView(b.buffer));
    return b;
  };
  const rec = HEADER_SIZE + 2 * 16; // first record
  const body = rec + RECORD_HEADER_SIZE;
  const cases: [string, Uint8Array][] = [
    ["page past its region", make((w) => w.zeroPages(1, [1]), (_b, v) => v.setUint32(body + 8, 8, true))],
    ["region not in the header", make((w) => w.zeroPages(1, [1]), (_b, v) => v.setUint32(body, 2, true))],
    ["more pages than the region has", make((w) => w.zeroPages(1, [1]), (_b, v) => v.setUint32(body + 4, 9, true))],
    ["count disagrees with the length", make((w) => w.zeroPages(1, [1, 2]), (_b, v) => v.setUint32(body + 4, 1, true))],
    ["record longer than the stream", make((w) => w.deviceState(0, new Uint8Array(8)), (_b, v) => v.setUint32(rec + 4, 1000, true))],
    ["non-zero padding", make((w) => w.deviceState(0, new Uint8Array(3)), (b) => (b[body + 8 + 3] = 1))],
    ["non-zero reserved field", make((w) => w.deviceState(0, new Uint8Array(3)), (_b, v) => v.setUint32(body + 4, 1, true))],
    ["delta past its record", make((w) => w.deltaPages(0, [{ pfn: 1, delta: new Uint8Array(4) }]), (_b, v) => v.setUint32(body + 12, 400, true))],
    ["disk write past its record", make((w) => w.diskWrites(0, [{ offset: 0, data: new Uint8Array(8) }]), (_b, v) => v.setUint32(body + 16, 64, true))],
    ["u64 past 2^53", make((w) => w.checkpointEnd(1, 1), (_b, v) => v.setUint32(body + 4, 0xffffffff, true))],
    // Found by the long fuzz: a length past 2^31 once wrapped negative when padded, and "fit".
    ["record length past 2^31", make((w) => w.deviceState(0, new Uint8Array(8)), (_b, v) => v.setUint32(rec + 4, 0xe2000000, true))],
    ["checkpoint end of the wrong size", make((w) => w.checkpointEnd(1, 1), (_b, v) => v.setUint32(rec + 4, 8, true))],
    ["output channel not UTF-8", make((w) => w.outputs([{ seq: 1, channel: "ab", data: new Uint8Array(0) }]), (b) => (b[body + 8 + 16] = 0xff))],
    ["output past its record", make((w) => w.outputs([{ seq: 1, channel: "ab", data: new Uint8Array(3) }]), (_b, v) => v.setUint32(body + 8 + 12, 99, true))],
  ];
  for (const [name, bytes] of cases) assert.is(errorCode(() => new StreamReader().read(bytes)), ErrorCode.StreamFormat, name);
});

test("the writer refuses what it cannot describe", () => {
  assert.is(errorCode(() => new StreamWriter({ pageSize: 3000, regions: [{ size: 3000 }] })), ErrorCode.BadArgument);
  assert.is(errorCode(() => new StreamWriter({ pageSize: PAGE, regions: [] })), ErrorCode.BadArgument);
  const w = new StreamWriter(header);
  assert.is(errorCode(() => w.zeroPages(1, [8])), ErrorCode.OutOfRange);
  assert.is(errorCode(() => w.pages(0, [1], () => new Uint8Array(10))), ErrorCode.BadArgument);
});

test("fuzz: random corruption is parsed or refused with a stream code, nothing else", () => {
  const runs = Number(globalThis.process?.env?.TANDEM_FUZZ ?? 2000);
  const random = seededRandom(91);
  const { bytes } = sample();
  for (let run = 0; run < runs; run++) {
    const bad = bytes.slice();
    for (let i = 1 + Math.floor(random() * 4); i > 0; i--) bad[Math.floor(random() * bad.length)] = Math.floor(random() * 256);
    try {
      new StreamReader().read(bad);
    } catch (error) {
      assert.instance(error, TandemError, `run ${run}: ${String(error)}`);
      assert.ok((error as TandemError).code.startsWith("E_STREAM_"), `run ${run}: ${(error as TandemError).code}`);
    }
  }
});

test.run();
