import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode } from "../host/errors.ts";
import { ReferenceMachine } from "../host/machine/reference-machine.ts";
import { PageDeltaCodec } from "../host/protocol/page-delta.ts";
import { StreamReader } from "../host/protocol/stream/reader.ts";
import { StreamWriter } from "../host/protocol/stream/writer.ts";
import { applyCheckpoint, checkLayout } from "../host/replication/apply-checkpoint.ts";
import { errorCode } from "./support/errors.ts";
import { bytesEqual } from "./support/flavors.ts";

const test = suite("applying a checkpoint to a standby: all or nothing");
const OPTIONS = { memoryBytes: 1 << 20, dirtyPages: 4, diskBytes: 16 * 1024, diskEvery: 2, seed: 3 };

function standby() {
  const m = new ReferenceMachine(OPTIONS);
  return { m, ram: () => m.memory[0].bytes().slice(), disk: () => m.disks[0].read(0, m.disks[0].size) };
}

/** A checkpoint of `source` (every page, its disk, its devices) as stream records. */
function fullCheckpoint(source: ReferenceMachine, n: number) {
  const w = new StreamWriter({ pageSize: 4096, regions: [{ size: source.memory[0].size }] });
  w.writeHeader();
  const ram = source.memory[0].bytes();
  const pfns = Array.from({ length: source.memory[0].pageCount }, (_, i) => i);
  w.pages(0, pfns, (pfn) => ram.subarray(pfn * 4096, (pfn + 1) * 4096));
  w.deviceState(0, source.saveDevices());
  w.diskWrites(0, [{ offset: 0, data: source.disks[0].read(0, source.disks[0].size) }]);
  w.checkpointEnd(n, 1);
  const reader = new StreamReader();
  const records = reader.read(w.take());
  return { records, header: reader.header! };
}

test("a full checkpoint makes the standby a copy that continues like the source", () => {
  const source = new ReferenceMachine(OPTIONS);
  source.step(25);
  const { records, header } = fullCheckpoint(source, 7);
  const { m } = standby();
  checkLayout(header, m);
  const applied = applyCheckpoint(m, records, new PageDeltaCodec());
  assert.equal([applied.checkpoint, applied.generation], [7, 1]);
  m.restoreDevices(applied.devices!);
  assert.ok(bytesEqual(m.memory[0].bytes(), source.memory[0].bytes()));
  const out: string[] = [];
  m.onOutput((o) => out.push(new TextDecoder().decode(o.data)));
  m.step(1);
  assert.equal(out, ["counter 26\n"]);
});

test("a checkpoint with a bad delta or a disk write past the end changes nothing", () => {
  const source = new ReferenceMachine(OPTIONS);
  source.step(5);
  const reader = new StreamReader();
  const w = new StreamWriter({ pageSize: 4096, regions: [{ size: 1 << 20 }] });
  w.writeHeader();
  w.pages(0, [1], () => new Uint8Array(4096).fill(9));
  w.deltaPages(0, [{ pfn: 2, delta: Uint8Array.of(0x81, 0x20, 0x01, 7) }]); // zrun past the page
  w.checkpointEnd(1, 1);
  const badDelta = reader.read(w.take());
  w.pages(0, [1], () => new Uint8Array(4096).fill(9));
  w.diskWrites(0, [{ offset: 16 * 1024 - 10, data: new Uint8Array(20) }]);
  w.checkpointEnd(2, 1);
  const badDisk = reader.read(w.take());
  for (const [name, records] of [["bad delta", badDelta], ["disk write past the end", badDisk]] as const) {
    const s = standby();
    const before = s.ram();
    const disk = s.disk();
    assert.is(errorCode(() => applyCheckpoint(s.m, records, new PageDeltaCodec())), ErrorCode.StreamFormat, name);
    assert.ok(bytesEqual(s.ram(), before), `${name}: RAM untouched (page 1 was not written)`);
    assert.ok(bytesEqual(s.disk(), disk), `${name}: disk untouched`);
  }
});

test("a stream for another memory layout, or records without CHECKPOINT_END, are refused", () => {
  const { m } = standby();
  assert.is(errorCode(() => checkLayout({ pageSize: 4096, regions: [{ size: 2 << 20 }] }, m)), ErrorCode.StreamFormat);
  const w = new StreamWriter({ pageSize: 4096, regions: [{ size: 1 << 20 }] });
  w.writeHeader();
  w.zeroPages(0, [3]);
  const records = new StreamReader().read(w.take());
  assert.is(errorCode(() => applyCheckpoint(m, records, new PageDeltaCodec())), ErrorCode.StreamFormat);
});

test.run();
