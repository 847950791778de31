import { suite } from "uvu";
import * as assert from "uvu/assert";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { crc32c } from "../host/disk/crc32.ts";
import { ErrorCode, type TandemError } from "../host/errors.ts";
import { ReferenceMachine } from "../host/machine/reference-machine.ts";
import { restore, save } from "../host/replication/save-restore.ts";
import { bytesEqual } from "./support/flavors.ts";
import { rejectionCode } from "./support/session.ts";

const test = suite("save and restore");
const OPTIONS = { memoryBytes: 2 << 20, dirtyPages: 5, diskBytes: 32 * 1024, diskEvery: 2, seed: 11 };
const dir = mkdtempSync(join(tmpdir(), "tandem-save-"));

test("a saved machine restores into an identical one that continues exactly", async () => {
  const source = new ReferenceMachine(OPTIONS);
  source.step(40);
  const file = join(dir, "image");
  const saved = await save(source, file).promise;
  assert.ok(saved.zeroPages > 0 && saved.bytes < 2 << 20, "zero pages are flags, not 4 KiB each");
  const copy = new ReferenceMachine(OPTIONS);
  await restore(copy, file, { resume: false }).promise;
  assert.ok(bytesEqual(copy.memory[0].bytes(), source.memory[0].bytes()));
  assert.ok(bytesEqual(copy.disks[0].read(0, 32 * 1024), source.disks[0].read(0, 32 * 1024)));
  const out: string[] = [];
  copy.onOutput((o) => out.push(new TextDecoder().decode(o.data)));
  copy.step(2);
  assert.equal(out, ["counter 41\n", "counter 42\n"]);
  assert.is(copy.diskErrors, 0);
});

test("a cut, corrupted or foreign image is refused and the machine is left as it was", async () => {
  const source = new ReferenceMachine(OPTIONS);
  source.step(10);
  const file = join(dir, "good");
  await save(source, file).promise;
  const good = readFileSync(file);
  const cases: [string, Uint8Array, string][] = [
    ["cut short", good.subarray(0, good.length - 8), ErrorCode.StreamFormat],
    ["cut in a record", good.subarray(0, Math.floor(good.length / 2)), ErrorCode.StreamFormat],
    ["bad magic", Uint8Array.from(good, (b, i) => (i === 0 ? 0 : b)), ErrorCode.StreamFormat], // the header's checksum catches it first
  ];
  for (const [name, bytes, code] of cases) {
    const bad = join(dir, name.replace(/ /g, "-"));
    writeFileSync(bad, bytes);
    const target = new ReferenceMachine(OPTIONS);
    target.step(3);
    const before = target.memory[0].bytes().slice();
    assert.is(await rejectionCode(restore(target, bad).promise), code, name);
    assert.ok(bytesEqual(target.memory[0].bytes(), before), `${name}: RAM untouched`);
  }
  const bigger = new ReferenceMachine({ ...OPTIONS, memoryBytes: 4 << 20 });
  const refusal = await restore(bigger, file).promise.then(() => undefined, (error: unknown) => error as TandemError);
  assert.is(refusal?.code, ErrorCode.GuestMismatch, "another memory size");
  assert.match(refusal!.message, "memory: image 2 MiB, machine 4 MiB");
  assert.is(await rejectionCode(restore(bigger, join(dir, "missing")).promise), ErrorCode.BadArgument, "no such file");
});

test("every part of a saved image carries a CRC-32C: a changed byte anywhere is refused, naming the record", async () => {
  const source = new ReferenceMachine(OPTIONS);
  source.step(10);
  const file = join(dir, "checked");
  await save(source, file).promise;
  const good = readFileSync(file);
  const flip = (at: number) => Uint8Array.from(good, (b, i) => (i === at ? b ^ 0x40 : b));
  // A byte in the middle of the image lies in page data; one near the end in the trailer.
  const cases: [string, Uint8Array, RegExp][] = [
    ["page data", flip(Math.floor(good.length / 3)), /record \d+ \([\w-]+\) at byte \d+ is damaged: its checksum does not match/],
    ["header", flip(12), /the stream header \(bytes 0 to \d+\) is damaged/],
    ["checksum table", flip(good.length - 24), /checksum table is damaged/],
    ["no trailer", good.subarray(0, good.length - 20), /has no checksums at its end/],
  ];
  for (const [name, bytes, message] of cases) {
    const bad = join(dir, `damaged-${name.replace(/ /g, "-")}`);
    writeFileSync(bad, bytes);
    const target = new ReferenceMachine(OPTIONS);
    const before = target.memory[0].bytes().slice();
    const error = await restore(target, bad).promise.then(() => undefined, (e: unknown) => e as TandemError);
    assert.is(error?.code, ErrorCode.StreamFormat, name);
    assert.match(error!.message, message, name);
    assert.ok(error!.message.includes(bad), `${name}: names the file`);
    assert.ok(bytesEqual(target.memory[0].bytes(), before), `${name}: RAM untouched`);
  }
});

test("crc32c: the check value of the Castagnoli polynomial, and continuation", () => {
  const nine = new TextEncoder().encode("123456789");
  assert.is(crc32c(nine), 0xe3069283);
  assert.is(crc32c(nine.subarray(4), crc32c(nine.subarray(0, 4))), 0xe3069283);
  const odd = Uint8Array.from({ length: 1001 }, (_, i) => (i * 37) & 0xff);
  assert.is(crc32c(odd), crc32c(odd.subarray(13), crc32c(odd.subarray(0, 13))), "eight at a time and byte at a time agree");
});

test("saving over an image replaces it whole; a failed write leaves the old one", async () => {
  const m = new ReferenceMachine(OPTIONS);
  m.step(5);
  const file = join(dir, "replace");
  await save(m, file).promise;
  const first = readFileSync(file);
  m.step(5);
  mkdirSync(`${file}.tandem-partial`); // the temporary file cannot be written: this save fails
  assert.is(await rejectionCode(save(m, file).promise), ErrorCode.Failed);
  assert.equal(readFileSync(file), first, "the old image is intact");
  rmSync(`${file}.tandem-partial`, { recursive: true });
  await save(m, file).promise;
  assert.not.equal(readFileSync(file), first, "replaced");
  assert.is(await rejectionCode(save(m, join(dir, "no-such-dir", "x")).promise), ErrorCode.Failed);
});

test.after(() => rmSync(dir, { recursive: true, force: true }));

test.run();
