import { Buffer } from "node:buffer";
import { copyFileSync, readFileSync, statSync, writeFileSync } from "node:fs";
import * as zlib from "node:zlib";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { applyBatch, recoverJournal } from "../host/disk/batch-journal.ts";
import { FileBlockFile, type BlockFile } from "../host/disk/block-file.ts";
import { DiskBase, type Disk, type DiskExtent, type DiskInfo } from "../host/disk/disk.ts";
import { createImage, formatNames, openDisk } from "../host/disk/registry.ts";
import { MAX_DATA_RECORD_BYTES, TrackedDisk, type DiskBatch, type DiskRange } from "../host/disk/write-tracker.ts";
import { ErrorCode } from "../host/errors.ts";
import { seededRandom } from "../host/prng.ts";
import { errorCode } from "./support/errors.ts";
import { qemuCheck, qemuTest, runQemu, tempDir } from "./support/qemu.ts";

const test = suite("disk checkpoints: write tracking, batches and the crash-safe journal");

type Random = () => number;

/** The simulated crash. */
class Crash extends Error {}

/** Numbers every write, zeroing, flush, sync and truncation of a disk and its journal; number `crashAt` throws a {@link Crash} instead of happening. */
class FaultClock {
  ops = 0;
  constructor(readonly crashAt = Infinity) {}
  tick(): void {
    if (++this.ops === this.crashAt) throw new Crash(`crash at step ${this.ops}`);
  }
}

/** What a power loss keeps of a write made since the last sync: all of it, none, or some of its 512-byte sectors. */
function survivingParts(data: Uint8Array, random: Random): { at: number; bytes: Uint8Array }[] {
  const r = random();
  if (r < 1 / 3) return [{ at: 0, bytes: data }];
  if (r < 2 / 3) return [];
  const parts: { at: number; bytes: Uint8Array }[] = [];
  for (let at = 0; at < data.length; at += 512) if (random() < 0.5) parts.push({ at, bytes: data.subarray(at, at + 512) });
  return parts;
}

/** `bytes` with `data` written at `offset`, grown if needed. */
function place(bytes: Uint8Array, offset: number, data: Uint8Array): Uint8Array {
  const out = offset + data.length > bytes.length ? resize(bytes, offset + data.length) : bytes;
  out.set(data, offset);
  return out;
}

function resize(bytes: Uint8Array, length: number): Uint8Array {
  const out = new Uint8Array(length);
  out.set(bytes.subarray(0, length));
  return out;
}

/** A disk in memory whose writes since the last flush a simulated power loss may lose, in whole or in part. */
class VolatileDisk extends DiskBase {
  readonly format = "volatile";
  readonly readOnly: boolean;
  readonly backing = null;
  readonly size: number;
  readonly bytes: Uint8Array;
  #durable: Uint8Array;
  #pending: { offset: number; data: Uint8Array }[] = [];
  readonly #clock: FaultClock;

  constructor(initial: Uint8Array, clock = new FaultClock(), readOnly = false) {
    super();
    this.size = initial.length;
    this.bytes = initial.slice();
    this.#durable = initial.slice();
    this.#clock = clock;
    this.readOnly = readOnly;
  }
  /** The bytes a power loss now would leave. */
  afterPowerLoss(random: Random): Uint8Array {
    const out = this.#durable.slice();
    for (const w of this.#pending) for (const p of survivingParts(w.data, random)) out.set(p.bytes, w.offset + p.at);
    return out;
  }
  protected doRead(offset: number, target: Uint8Array): void {
    target.set(this.bytes.subarray(offset, offset + target.length));
  }
  protected doWrite(offset: number, data: Uint8Array): void {
    this.#clock.tick();
    this.bytes.set(data, offset);
    this.#pending.push({ offset, data: data.slice() });
  }
  protected doWriteZeroes(offset: number, length: number): void {
    this.doWrite(offset, new Uint8Array(length));
  }
  protected doDiscard(offset: number, length: number): void {
    this.doWrite(offset, new Uint8Array(length));
  }
  protected doFlush(): void {
    this.#clock.tick();
    this.#durable = this.bytes.slice();
    this.#pending = [];
  }
  protected doMap(offset: number, length: number): DiskExtent[] {
    return [{ offset, length, present: true, zero: false, data: true, depth: 0 }];
  }
  protected doClose(): void {}
  info(): DiskInfo {
    return { format: this.format, fileName: "(memory)", virtualSize: this.size, fileSize: this.size };
  }
}

/** A journal file in memory whose writes and truncations since the last sync a simulated power loss may lose. */
class VolatileFile implements BlockFile {
  readonly path = "(memory journal)";
  readonly readOnly = false;
  /** True once a sync made a non-empty journal durable. */
  syncedWithData = false;
  #bytes: Uint8Array;
  #durable: Uint8Array;
  #pending: ({ offset: number; data: Uint8Array } | { truncate: number })[] = [];
  readonly #clock: FaultClock;

  constructor(initial: Uint8Array = new Uint8Array(0), clock = new FaultClock()) {
    this.#bytes = initial.slice();
    this.#durable = initial.slice();
    this.#clock = clock;
  }
  get bytes(): Uint8Array {
    return this.#bytes.slice();
  }
  afterPowerLoss(random: Random): Uint8Array {
    let out: Uint8Array = this.#durable.slice();
    for (const op of this.#pending) {
      if ("truncate" in op) {
        if (random() < 0.5) out = resize(out, op.truncate);
      } else {
        for (const p of survivingParts(op.data, random)) out = place(out, op.offset + p.at, p.bytes);
      }
    }
    return out;
  }
  size(): number {
    return this.#bytes.length;
  }
  read(offset: number, target: Uint8Array): number {
    const n = Math.max(0, Math.min(target.length, this.#bytes.length - offset));
    target.set(this.#bytes.subarray(offset, offset + n));
    return n;
  }
  write(offset: number, data: Uint8Array): void {
    this.#clock.tick();
    this.#bytes = place(this.#bytes, offset, data);
    this.#pending.push({ offset, data: data.slice() });
  }
  sync(): void {
    this.#clock.tick();
    this.#durable = this.#bytes.slice();
    this.#pending = [];
    if (this.#bytes.length > 0) this.syncedWithData = true;
  }
  truncate(length: number): void {
    this.#clock.tick();
    this.#bytes = resize(this.#bytes, length);
    this.#pending.push({ truncate: length });
  }
  close(): void {}
}

/** A disk that forwards to `inner`, ticking `clock` before each change: a process crash at any step. */
class FaultyDisk extends DiskBase {
  readonly format: string;
  readonly size: number;
  readonly readOnly = false;
  readonly backing: Disk | null;
  constructor(
    readonly inner: Disk,
    readonly clock: FaultClock,
  ) {
    super();
    this.format = inner.format;
    this.size = inner.size;
    this.backing = inner.backing;
  }
  protected doRead(offset: number, target: Uint8Array): void {
    this.inner.readInto(offset, target);
  }
  protected doWrite(offset: number, data: Uint8Array): void {
    this.clock.tick();
    this.inner.write(offset, data);
  }
  protected doWriteZeroes(offset: number, length: number): void {
    this.clock.tick();
    this.inner.writeZeroes(offset, length);
  }
  protected doDiscard(offset: number, length: number): void {
    this.clock.tick();
    this.inner.discard(offset, length);
  }
  protected doFlush(): void {
    this.clock.tick();
    this.inner.flush();
  }
  protected doMap(offset: number, length: number): DiskExtent[] {
    return this.inner.map(offset, length);
  }
  protected doClose(): void {
    this.inner.close();
  }
  info(): DiskInfo {
    return this.inner.info();
  }
}

/** A journal file that forwards to a real one, ticking `clock` before each change. */
class FaultyFile implements BlockFile {
  /** True once a sync made a non-empty journal durable. */
  syncedWithData = false;
  constructor(
    readonly inner: BlockFile,
    readonly clock: FaultClock,
  ) {}
  get path(): string {
    return this.inner.path;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  size(): number {
    return this.inner.size();
  }
  read(offset: number, target: Uint8Array): number {
    return this.inner.read(offset, target);
  }
  write(offset: number, data: Uint8Array): void {
    this.clock.tick();
    this.inner.write(offset, data);
  }
  sync(): void {
    this.clock.tick();
    this.inner.sync();
    if (this.inner.size() > 0) this.syncedWithData = true;
  }
  truncate(length: number): void {
    this.clock.tick();
    this.inner.truncate(length);
  }
  close(): void {
    this.inner.close();
  }
}

function randomBytes(length: number, random: Random): Uint8Array {
  const words = new Uint32Array(Math.ceil(length / 4));
  for (let i = 0; i < words.length; i++) words[i] = random() * 2 ** 32;
  return new Uint8Array(words.buffer, 0, length);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length));
}

/** Which of `old`/`next` `got` equals, or "a mix". */
function whichState(got: Uint8Array, old: Uint8Array, next: Uint8Array): "old" | "new" | "a mix" {
  if (sameBytes(got, next)) return "new";
  return sameBytes(got, old) ? "old" : "a mix";
}

/** The runs of non-zero bytes of `marks`, as ranges. */
function runs(marks: Uint8Array): DiskRange[] {
  const out: DiskRange[] = [];
  for (let i = 0; i < marks.length; ) {
    if (marks[i] === 0) {
      i++;
      continue;
    }
    const start = i;
    while (i < marks.length && marks[i] !== 0) i++;
    out.push({ offset: start, length: i - start });
  }
  return out;
}

/** Adjacent ranges joined. */
function joined(ranges: readonly DiskRange[]): DiskRange[] {
  const out: DiskRange[] = [];
  for (const r of ranges) {
    const last = out[out.length - 1];
    if (last !== undefined && last.offset + last.length === r.offset) last.length += r.length;
    else out.push({ ...r });
  }
  return out;
}

function recordLength(record: DiskBatch[number]): number {
  return "zero" in record ? record.length : record.data.length;
}

/** `old` with `batch` applied, as a standby would. */
function applied(old: Uint8Array, batch: DiskBatch): Uint8Array {
  const out = old.slice();
  for (const r of batch) {
    if ("zero" in r) out.fill(0, r.offset, r.offset + r.length);
    else out.set(r.data, r.offset);
  }
  return out;
}

/** One random guest operation on `disk`, mirrored into the byte models. */
function randomOperation(
  disk: Disk,
  random: Random,
  model: { bytes: Uint8Array; changed: Uint8Array; zeroed: Uint8Array },
  maxLength: number,
): void {
  const aligned = random() < 0.5;
  let offset = Math.floor(random() * disk.size);
  let length = 1 + Math.floor(random() * maxLength);
  if (aligned) {
    offset -= offset % 512;
    length = Math.max(512, length - (length % 512));
  }
  length = Math.min(length, disk.size - offset);
  const kind = random();
  if (kind < 0.7) {
    const data = random() < 0.1 ? new Uint8Array(length) : randomBytes(length, random);
    disk.write(offset, data);
    model.bytes.set(data, offset);
    model.zeroed.fill(0, offset, offset + length);
  } else {
    if (kind < 0.85) disk.writeZeroes(offset, length);
    else disk.discard(offset, length);
    model.bytes.fill(0, offset, offset + length);
    model.zeroed.fill(1, offset, offset + length);
  }
  model.changed.fill(1, offset, offset + length);
}

/** A batch of a random workload over `old`, and the disk it leads to. */
function randomBatch(old: Uint8Array, random: Random, operations: number, maxLength: number): { batch: DiskBatch; next: Uint8Array } {
  const disk = new TrackedDisk(new VolatileDisk(old));
  const model = { bytes: old.slice(), changed: new Uint8Array(old.length), zeroed: new Uint8Array(old.length) };
  for (let i = 0; i < operations; i++) randomOperation(disk, random, model, maxLength);
  return { batch: disk.takeBatch(), next: model.bytes };
}

test("tracking coalesces overlapping and adjacent writes, and forgets them once a batch is taken", () => {
  const disk = new TrackedDisk(new VolatileDisk(new Uint8Array(1 << 20)));
  disk.write(0, new Uint8Array(10));
  disk.write(10, new Uint8Array(10));
  disk.write(5000, new Uint8Array(100));
  disk.write(3000, new Uint8Array(100));
  disk.write(2000, new Uint8Array(100));
  assert.equal(disk.changedRanges(), [
    { offset: 0, length: 20 },
    { offset: 2000, length: 100 },
    { offset: 3000, length: 100 },
    { offset: 5000, length: 100 },
  ]);
  disk.writeZeroes(2050, 1000);
  assert.equal(disk.changedRanges(), [
    { offset: 0, length: 20 },
    { offset: 2000, length: 1100 },
    { offset: 5000, length: 100 },
  ]);
  disk.discard(19, 4982);
  assert.equal(disk.changedRanges(), [{ offset: 0, length: 5100 }]);
  disk.write(100, Uint8Array.of(7, 7));
  const batch = disk.takeBatch();
  assert.equal(
    batch.map((r) => ("zero" in r ? ["zero", r.offset, r.length] : ["data", r.offset, r.data.length])),
    [
      ["data", 0, 19],
      ["zero", 19, 81],
      ["data", 100, 2],
      ["zero", 102, 4899],
      ["data", 5001, 99],
    ],
  );
  assert.equal(disk.changedRanges(), [], "a batch resets the tracking");
  assert.equal(disk.takeBatch(), []);
  assert.is(disk.granularity, 1);
});

test("a call that fails part-way is still tracked, and a zeroing that failed is sent as data, not zeros", () => {
  const old = new Uint8Array(64 << 10).fill(5);
  const clock = new FaultClock(2);
  const disk = new TrackedDisk(new FaultyDisk(new VolatileDisk(old), clock));
  disk.write(100, Uint8Array.of(1, 2));
  assert.throws(() => disk.writeZeroes(4096, 8192), (e: unknown) => e instanceof Crash);
  assert.equal(disk.changedRanges(), [
    { offset: 100, length: 2 },
    { offset: 4096, length: 8192 },
  ]);
  const batch = disk.takeBatch();
  assert.is(batch.length, 2);
  const second = batch[1];
  assert.ok(!("zero" in second) && sameBytes(second.data, old.subarray(4096, 4096 + 8192)), "the unzeroed range goes as its bytes");
});

test("random workloads: tracked ranges and zero records match a byte model, and a batch turns the old disk into the new one", () => {
  const random = seededRandom(601);
  const size = 1 << 20;
  for (let trial = 0; trial < 12; trial++) {
    const old = randomBytes(size, random);
    const disk = new TrackedDisk(new VolatileDisk(old));
    const model = { bytes: old.slice(), changed: new Uint8Array(size), zeroed: new Uint8Array(size) };
    const operations = 1 + Math.floor(random() * 200);
    const maxLength = trial % 3 === 0 ? 300_000 : 9000;
    for (let i = 0; i < operations; i++) randomOperation(disk, random, model, maxLength);
    assert.equal(disk.changedRanges(), runs(model.changed), `trial ${trial}: changed ranges`);
    const batch = disk.takeBatch();
    let end = 0;
    for (const r of batch) {
      assert.ok(r.offset >= end, `trial ${trial}: records ascend without overlap`);
      end = r.offset + recordLength(r);
      if (!("zero" in r)) assert.ok(r.data.length <= MAX_DATA_RECORD_BYTES);
    }
    const ranges = batch.map((r) => ({ offset: r.offset, length: recordLength(r) }));
    assert.equal(joined(ranges), runs(model.changed), `trial ${trial}: the batch covers exactly what changed`);
    assert.equal(joined(ranges.filter((_, i) => "zero" in batch[i])), runs(model.zeroed), `trial ${trial}: zero records`);
    assert.ok(sameBytes(applied(old, batch), model.bytes), `trial ${trial}: old + batch = new`);
  }
});

/** A disk that stores nothing: for tracking writes anywhere on a disk too large to hold. */
class NullDisk extends DiskBase {
  readonly format = "null";
  readonly readOnly = false;
  readonly backing = null;
  constructor(readonly size: number) {
    super();
  }
  protected doRead(): void {}
  protected doWrite(): void {}
  protected doWriteZeroes(): void {}
  protected doDiscard(): void {}
  protected doFlush(): void {}
  protected doMap(offset: number, length: number): DiskExtent[] {
    return [{ offset, length, present: false, zero: true, data: false, depth: 0 }];
  }
  protected doClose(): void {}
  info(): DiskInfo {
    return { format: this.format, fileName: "(null)", virtualSize: this.size, fileSize: 0 };
  }
}

/** The union of `ranges`, sorted, touching ones joined: the plain way. */
function union(ranges: readonly DiskRange[]): DiskRange[] {
  const out: DiskRange[] = [];
  for (const r of [...ranges].sort((a, b) => a.offset - b.offset)) {
    const last = out[out.length - 1];
    if (last !== undefined && r.offset <= last.offset + last.length) {
      last.length = Math.max(last.length, r.offset + r.length - last.offset);
    } else {
      out.push({ ...r });
    }
  }
  return out;
}

test("writes at offsets of every magnitude up to 2^52, in any order, merge like a plain sort-and-join", () => {
  const random = seededRandom(608);
  const size = 2 ** 52;
  for (let trial = 0; trial < 6; trial++) {
    const disk = new TrackedDisk(new NullDisk(size), { maxRanges: 1 << 20 });
    const written: DiskRange[] = [];
    const count = 500 + Math.floor(random() * 9000);
    for (let i = 0; i < count; i++) {
      // Clustered near a few places half the time, so ranges overlap and touch.
      const offset = random() < 0.5 ? Math.floor(random() * 2 ** Math.floor(random() * 52)) : Math.floor(random() * 64) * 1000 + (trial << 40);
      const length = 1 + Math.floor(random() * 3000);
      disk.write(offset, new Uint8Array(length));
      written.push({ offset, length });
      if (random() < 0.001) assert.equal(disk.changedRanges(), union(written), `trial ${trial}, after ${i + 1} writes`);
    }
    assert.equal(disk.changedRanges(), union(written), `trial ${trial}`);
  }
});

test("past maxRanges the tracker coarsens instead of growing, and its batches stay exact", () => {
  const random = seededRandom(602);
  const size = 1 << 20;
  for (let trial = 0; trial < 6; trial++) {
    const maxRanges = 2 + Math.floor(random() * 30);
    const old = randomBytes(size, random);
    const disk = new TrackedDisk(new VolatileDisk(old), { maxRanges });
    const model = { bytes: old.slice(), changed: new Uint8Array(size), zeroed: new Uint8Array(size) };
    for (let i = 1; i <= 300; i++) {
      randomOperation(disk, random, model, 2000);
      const ranges = disk.changedRanges();
      assert.ok(ranges.length <= maxRanges, `trial ${trial}: ${ranges.length} ranges > ${maxRanges}`);
      if (i % 50 !== 0) continue;
      let k = 0;
      for (const run of runs(model.changed)) {
        while (k < ranges.length && ranges[k].offset + ranges[k].length < run.offset + run.length) k++;
        assert.ok(k < ranges.length && ranges[k].offset <= run.offset, `trial ${trial}: changed bytes at ${run.offset} are covered`);
      }
    }
    assert.ok(disk.granularity >= 4096, `trial ${trial}: coarsened to ${disk.granularity}`);
    const batch = disk.takeBatch();
    assert.ok(sameBytes(applied(old, batch), model.bytes), `trial ${trial}: old + batch = new`);
    assert.is(disk.granularity, 1, "a batch returns to byte granularity");
  }
  assert.is(errorCode(() => new TrackedDisk(new VolatileDisk(new Uint8Array(8)), { maxRanges: 1 })), ErrorCode.BadArgument);
});

test("the journal's bytes are the documented layout", () => {
  const disk = new VolatileDisk(new Uint8Array(8192));
  const clock = new FaultClock(3); // write, sync, then crash before the first disk write
  const journal = new VolatileFile(new Uint8Array(0), clock);
  assert.throws(() => applyBatch(new VolatileDisk(new Uint8Array(8192), clock), [{ offset: 4096, data: Uint8Array.of(0xaa, 0xbb, 0xcc) }, { offset: 16, length: 512, zero: true }], { journal }), (e: unknown) => e instanceof Crash);
  const bytes = journal.bytes;
  const view = new DataView(bytes.buffer);
  assert.is(bytes.length, 32 + 24 + 3 + 24 + 4);
  assert.is(new TextDecoder().decode(bytes.subarray(0, 8)), "TNDMJRNL");
  assert.is(view.getUint32(8, true), 1, "version");
  assert.is(view.getUint32(12, true), 2, "records");
  assert.is(view.getBigUint64(16, true), 8192n, "disk size");
  assert.is(view.getBigUint64(24, true), BigInt(24 + 3 + 24), "body bytes");
  assert.equal([view.getBigUint64(32, true), view.getBigUint64(40, true), view.getUint32(48, true), view.getUint32(52, true)], [4096n, 3n, 0, 0]);
  assert.equal(Array.from(bytes.subarray(56, 59)), [0xaa, 0xbb, 0xcc]);
  assert.equal([view.getBigUint64(59, true), view.getBigUint64(67, true), view.getUint32(75, true), view.getUint32(79, true)], [16n, 512n, 1, 0]);
  assert.is(view.getUint32(83, true), zlib.crc32(bytes.subarray(0, 83)), "trailer: zlib's CRC-32 of all before it");
  const report = recoverJournal(disk, new VolatileFile(bytes));
  assert.equal(report, { outcome: "replayed", records: 2 });
  assert.equal(Array.from(disk.read(4096, 3)), [0xaa, 0xbb, 0xcc]);
});

test("a crash at every step of applyBatch, with writes since the last sync lost at random, recovers to exactly the old or the new disk", () => {
  const random = seededRandom(603);
  const outcomes = new Map<string, number>();
  for (let trial = 0; trial < 3; trial++) {
    const size = trial === 0 ? 2 << 20 : 256 << 10;
    const old = randomBytes(size, random);
    const { batch, next } = randomBatch(old, random, 4 + trial * 6, 60_000);
    // Trial 0 also carries a record larger than the journal's 1 MiB staging buffer and replay chunk.
    if (trial === 0) batch.push({ offset: size - 1_200_000, data: randomBytes(1_200_000, random) });
    const expected = trial === 0 ? applied(old, batch) : next;
    const dry = new FaultClock();
    applyBatch(new VolatileDisk(old, dry), batch, { journal: new VolatileFile(new Uint8Array(0), dry) });
    for (let crashAt = 1; crashAt <= dry.ops; crashAt++) {
      for (let loss = 0; loss < 3; loss++) {
        const clock = new FaultClock(crashAt);
        const disk = new VolatileDisk(old, clock);
        const journal = new VolatileFile(new Uint8Array(0), clock);
        assert.throws(() => applyBatch(disk, batch, { journal }), (e: unknown) => e instanceof Crash);
        const lost = seededRandom(trial * 10_000 + crashAt * 10 + loss);
        const after = new VolatileDisk(disk.afterPowerLoss(lost));
        const afterJournal = new VolatileFile(journal.afterPowerLoss(lost));
        const report = recoverJournal(after, afterJournal);
        const state = whichState(after.bytes, old, expected);
        const where = `trial ${trial}, crash at step ${crashAt}/${dry.ops}, loss ${loss}: ${report.outcome}`;
        assert.is.not(state, "a mix", where);
        if (journal.syncedWithData) assert.is(state, "new", `${where}: the journal was synced, so the batch committed`);
        if (report.outcome === "replayed") assert.is(state, "new", where);
        if (report.outcome === "discarded") assert.is(state, "old", where);
        assert.is(afterJournal.size(), 0, `${where}: the journal is emptied`);
        outcomes.set(`${report.outcome}/${state}`, (outcomes.get(`${report.outcome}/${state}`) ?? 0) + 1);
      }
    }
  }
  for (const seen of ["none/old", "none/new", "replayed/new", "discarded/old"]) assert.ok(outcomes.has(seen), `outcome ${seen} occurred: ${[...outcomes.keys()]}`);
});

test("a crash during recovery is recovered by the next recovery", () => {
  const random = seededRandom(604);
  const old = randomBytes(256 << 10, random);
  const { batch, next } = randomBatch(old, random, 20, 20_000);
  // A complete journal, synced, with the disk untouched: a crash just after the journal's sync.
  const first = new FaultClock(3);
  const journal = new VolatileFile(new Uint8Array(0), first);
  assert.throws(() => applyBatch(new VolatileDisk(old, first), batch, { journal }), (e: unknown) => e instanceof Crash);
  const complete = journal.bytes;
  const dry = new FaultClock();
  recoverJournal(new VolatileDisk(old, dry), new VolatileFile(complete, dry));
  for (let crashAt = 1; crashAt <= dry.ops; crashAt++) {
    const clock = new FaultClock(crashAt);
    const disk = new VolatileDisk(old, clock);
    const file = new VolatileFile(complete, clock);
    assert.throws(() => recoverJournal(disk, file), (e: unknown) => e instanceof Crash);
    const lost = seededRandom(crashAt);
    const after = new VolatileDisk(disk.afterPowerLoss(lost));
    const report = recoverJournal(after, new VolatileFile(file.afterPowerLoss(lost)));
    assert.is(whichState(after.bytes, old, next), "new", `crash at recovery step ${crashAt}: ${report.outcome}`);
  }
});

test("torn journals (cut short anywhere, a byte flipped) are discarded and leave the old disk; a complete one replays idempotently", () => {
  const random = seededRandom(605);
  const old = randomBytes(128 << 10, random);
  const { batch, next } = randomBatch(old, random, 10, 10_000);
  const clock = new FaultClock(3);
  const journal = new VolatileFile(new Uint8Array(0), clock);
  assert.throws(() => applyBatch(new VolatileDisk(old, clock), batch, { journal }), (e: unknown) => e instanceof Crash);
  const complete = journal.bytes;

  const cuts = [1, 7, 8, 9, 31, 32, 33, 55, 56, complete.length - 5, complete.length - 4, complete.length - 1];
  for (let i = 0; i < 40; i++) cuts.push(1 + Math.floor(random() * (complete.length - 1)));
  for (const cut of cuts) {
    const disk = new VolatileDisk(old);
    const file = new VolatileFile(complete.subarray(0, cut));
    const report = recoverJournal(disk, file);
    assert.is(report.outcome, "discarded", `cut at ${cut}`);
    assert.ok(report.reason !== undefined && report.reason.includes("(memory journal)"), `cut at ${cut}: ${report.reason}`);
    assert.ok(sameBytes(disk.bytes, old), `cut at ${cut}: the disk is untouched`);
    assert.is(file.size(), 0);
  }
  // A crash can leave the header's block unwritten (zeros) while later blocks made it.
  const zeroHead = complete.slice();
  zeroHead.fill(0, 0, 16);
  const flips = [zeroHead];
  for (let i = 0; i < 40; i++) {
    const flipped = complete.slice();
    flipped[8 + Math.floor(random() * (complete.length - 8))] ^= 1 + Math.floor(random() * 255);
    flips.push(flipped);
  }
  for (const [i, bytes] of flips.entries()) {
    const disk = new VolatileDisk(old);
    assert.is(recoverJournal(disk, new VolatileFile(bytes)).outcome, "discarded", `flip ${i}`);
    assert.ok(sameBytes(disk.bytes, old), `flip ${i}: the disk is untouched`);
  }
  const disk = new VolatileDisk(old);
  assert.equal(recoverJournal(disk, new VolatileFile(complete)), { outcome: "replayed", records: batch.length });
  assert.ok(sameBytes(disk.bytes, next));
  assert.equal(recoverJournal(disk, new VolatileFile(complete)), { outcome: "replayed", records: batch.length }, "replaying again");
  assert.ok(sameBytes(disk.bytes, next), "replay is idempotent");
  assert.equal(recoverJournal(disk, new VolatileFile()), { outcome: "none", records: 0 });
});

test("a journal whose checksum holds but whose contents do not fit the disk is refused and left alone", () => {
  const old = new Uint8Array(64 << 10);
  const clock = new FaultClock(3);
  const journal = new VolatileFile(new Uint8Array(0), clock);
  const batch: DiskBatch = [{ offset: 100, data: Uint8Array.of(1, 2, 3) }];
  assert.throws(() => applyBatch(new VolatileDisk(old, clock), batch, { journal }), (e: unknown) => e instanceof Crash);
  const complete = journal.bytes;
  /** `complete` changed by `edit`, with the checksum made valid again. */
  const resealed = (edit: (view: DataView) => void): Uint8Array => {
    const bytes = complete.slice();
    const view = new DataView(bytes.buffer);
    edit(view);
    view.setUint32(bytes.length - 4, zlib.crc32(bytes.subarray(0, bytes.length - 4)), true);
    return bytes;
  };
  const cases: [string, Uint8Array, string][] = [
    ["another magic", resealed((v) => v.setUint8(0, 0x55)), ErrorCode.DiskFormat],
    ["a later version", resealed((v) => v.setUint32(8, 2, true)), ErrorCode.DiskUnsupported],
    ["another disk's size", resealed((v) => v.setBigUint64(16, 1n << 20n, true)), ErrorCode.DiskFormat],
    ["a wrong body length", resealed((v) => v.setBigUint64(24, 1000n, true)), ErrorCode.DiskFormat],
    ["more records than there are", resealed((v) => v.setUint32(12, 2, true)), ErrorCode.DiskFormat],
    ["no records for its body", resealed((v) => v.setUint32(12, 0, true)), ErrorCode.DiskFormat],
    ["a record past the disk's end", resealed((v) => v.setBigUint64(32, 65535n, true)), ErrorCode.DiskFormat],
    ["a record offset beyond 2^53", resealed((v) => v.setBigUint64(32, 1n << 60n, true)), ErrorCode.DiskFormat],
    ["a data length past the file", resealed((v) => v.setBigUint64(40, 1n << 40n, true)), ErrorCode.DiskFormat],
    ["unknown flags", resealed((v) => v.setUint32(48, 2, true)), ErrorCode.DiskFormat],
    ["reserved bits", resealed((v) => v.setUint32(52, 1, true)), ErrorCode.DiskFormat],
  ];
  for (const [name, bytes, code] of cases) {
    const disk = new VolatileDisk(old);
    const file = new VolatileFile(bytes);
    assert.is(errorCode(() => recoverJournal(disk, file)), code, name);
    assert.ok(sameBytes(disk.bytes, old), `${name}: the disk is untouched`);
    assert.ok(sameBytes(file.bytes, bytes), `${name}: the journal is left as it is`);
  }
  assert.is(errorCode(() => recoverJournal(new VolatileDisk(old, new FaultClock(), true), new VolatileFile(complete))), ErrorCode.DiskReadOnly);
});

test("applyBatch refuses bad records, read-only disks and an unrecovered journal, before touching anything", () => {
  const old = new Uint8Array(4096).fill(9);
  const disk = new VolatileDisk(old);
  const journal = new VolatileFile();
  const refused: [string, DiskBatch, string][] = [
    ["past the end", [{ offset: 4000, data: new Uint8Array(97) }], ErrorCode.OutOfRange],
    ["negative", [{ offset: -1, length: 1, zero: true }], ErrorCode.OutOfRange],
    ["fractional", [{ offset: 0.5, data: new Uint8Array(1) }], ErrorCode.OutOfRange],
    ["not bytes", [{ offset: 0, data: [1, 2] as unknown as Uint8Array }], ErrorCode.BadArgument],
    ["zero not true", [{ offset: 0, length: 1, zero: 1 as unknown as true }], ErrorCode.BadArgument],
  ];
  for (const [name, batch, code] of refused) {
    assert.is(errorCode(() => applyBatch(disk, [{ offset: 0, data: new Uint8Array(1) }, ...batch], { journal })), code, name);
  }
  assert.is(errorCode(() => applyBatch(new VolatileDisk(old, new FaultClock(), true), [{ offset: 0, length: 1, zero: true }], { journal })), ErrorCode.DiskReadOnly);
  const stale = new VolatileFile(Uint8Array.of(1));
  assert.is(errorCode(() => applyBatch(disk, [{ offset: 0, length: 1, zero: true }], { journal: stale })), ErrorCode.InvalidState);
  assert.ok(sameBytes(disk.bytes, old));
  assert.is(journal.size(), 0);
  assert.equal(applyBatch(disk, [], { journal }), { records: 0, dataBytes: 0, zeroBytes: 0 });
  assert.equal(applyBatch(disk, [{ offset: 0, data: new Uint8Array(3) }, { offset: 10, length: 5, zero: true }], { journal }), { records: 2, dataBytes: 3, zeroBytes: 5 });
});

/** The formats to test over files: raw always, qcow2 and cow once registered. */
function fileFormats(): string[] {
  return ["raw", "qcow2", "cow"].filter((f) => formatNames().includes(f));
}

/** Creates `name` in `dir` with `contents`: raw, or an overlay of `format` on `base.raw` when given. */
function makeImage(tmp: ReturnType<typeof tempDir>, name: string, format: string, contents: Uint8Array | null): string {
  const path = tmp.path(name);
  createImage(path, format, format === "raw" ? { size: 1 << 20 } : { size: 1 << 20, backingFile: "base.raw", backingFormat: "raw" });
  if (contents !== null) {
    const disk = openDisk(path);
    disk.write(0, contents.subarray(0, 300_000));
    disk.close();
  }
  return path;
}

test("over image files of every registered format, batches of random workloads keep a standby equal to the primary", () => {
  const random = seededRandom(606);
  for (const format of fileFormats()) {
    const tmp = tempDir("disk-batch");
    try {
      const base = randomBytes(1 << 20, random);
      writeFileSync(tmp.path("base.raw"), base);
      const start = randomBytes(1 << 20, random);
      const primary = new TrackedDisk(openDisk(makeImage(tmp, "primary.img", format, start)));
      const standby = openDisk(makeImage(tmp, "standby.img", format, start));
      const journalPath = tmp.path("standby.journal");
      for (let round = 0; round < 8; round++) {
        const model = { bytes: primary.read(0, primary.size), changed: new Uint8Array(primary.size), zeroed: new Uint8Array(primary.size) };
        const operations = 1 + Math.floor(random() * 60);
        for (let i = 0; i < operations; i++) randomOperation(primary, random, model, round % 2 === 0 ? 70_000 : 5000);
        const batch = primary.takeBatch();
        applyBatch(standby, batch, { journal: journalPath });
        assert.ok(sameBytes(standby.read(0, standby.size), model.bytes), `${format}, round ${round}: the standby equals the primary`);
        assert.ok(sameBytes(primary.read(0, primary.size), model.bytes), `${format}, round ${round}: the primary equals the model`);
        assert.is(statSync(journalPath).size, 0, "the journal is emptied after each batch");
      }
      primary.close();
      standby.close();
      if (format !== "cow" && qemuTest(`qemu-img compare of ${format} standby and primary`)) {
        assert.is(runQemu("qemu-img", ["compare", "-f", format, "-F", format, tmp.path("primary.img"), tmp.path("standby.img")]).status, 0, `${format}: qemu-img compare`);
        if (format === "qcow2") assert.is(qemuCheck(tmp.path("standby.img")).status, 0, "qemu-img check of the standby");
      }
      const reopened = openDisk(tmp.path("standby.img"), { readOnly: true });
      assert.equal(recoverJournal(reopened, journalPath), { outcome: "none", records: 0 });
      reopened.close();
    } finally {
      tmp.remove();
    }
  }
});

test("over image files of every registered format, a process crash at every step of applyBatch recovers to exactly the old or the new disk", () => {
  const random = seededRandom(607);
  for (const format of fileFormats()) {
    const tmp = tempDir("disk-batch-crash");
    try {
      writeFileSync(tmp.path("base.raw"), randomBytes(1 << 20, random));
      const oldPath = makeImage(tmp, "old.img", format, randomBytes(1 << 20, random));
      // The primary's writes land on old.img; a copy taken first is every standby's start.
      copyFileSync(oldPath, tmp.path("start.img"));
      const primary = new TrackedDisk(openDisk(oldPath));
      const old = primary.read(0, primary.size);
      const model = { bytes: old.slice(), changed: new Uint8Array(old.length), zeroed: new Uint8Array(old.length) };
      for (let i = 0; i < 12; i++) randomOperation(primary, random, model, 40_000);
      const batch = primary.takeBatch();
      primary.close();
      const standbyPath = tmp.path("standby.img");
      const journalPath = tmp.path("standby.journal");
      let steps = Infinity;
      const seen = new Set<string>();
      for (let crashAt = 1; crashAt <= steps; crashAt++) {
        copyFileSync(tmp.path("start.img"), standbyPath);
        writeFileSync(journalPath, new Uint8Array(0));
        const clock = new FaultClock(crashAt);
        const disk = new FaultyDisk(openDisk(standbyPath), clock);
        const journal = new FaultyFile(FileBlockFile.open(journalPath), clock);
        let crashed = false;
        try {
          applyBatch(disk, batch, { journal });
        } catch (error) {
          if (!(error instanceof Crash)) throw error;
          crashed = true;
        }
        journal.close();
        // A dead process's writes stay in the page cache; the format's own caches are written
        // here too (its crash safety is its own suite's business).
        disk.close();
        if (!crashed) steps = crashAt;
        const after = openDisk(standbyPath);
        const report = recoverJournal(after, journalPath);
        const state = whichState(after.read(0, after.size), old, model.bytes);
        after.close();
        const where = `${format}, crash at step ${crashAt}: ${report.outcome}`;
        assert.is.not(state, "a mix", where);
        if (journal.syncedWithData) assert.is(state, "new", `${where}: the journal was synced, so the batch committed`);
        if (report.outcome === "replayed") assert.is(state, "new", where);
        if (report.outcome === "discarded") assert.is(state, "old", where);
        assert.is(readFileSync(journalPath).length, 0, where);
        seen.add(state);
      }
      assert.ok(steps > batch.length + 3, `${format}: ${steps} steps were crashed at`);
      assert.equal([...seen].sort(), ["new", "old"], `${format}: crashes left both states`);
    } finally {
      tmp.remove();
    }
  }
});

test.run();
