import { copyFileSync, readFileSync, writeFileSync } from "node:fs";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import type { Disk, DiskExtent } from "../host/disk/disk.ts";
import { checkImage, createImage, openDisk } from "../host/disk/registry.ts";
import { ErrorCode } from "../host/errors.ts";
import { seededRandom } from "../host/prng.ts";
import { errorCode } from "./support/errors.ts";
import { assertMapsAgree } from "./support/map-agree.ts";
import { qemuCheck, qemuImg, qemuIo, qemuMap, qemuTest, runQemu, tempDir, type QemuMapExtent } from "./support/qemu.ts";

const test = suite("qcow2 with qemu-img as the judge: tandem's images check clean, qemu's images read back, maps agree");

const KiB = 1024;
const MiB = 1024 * KiB;
/** TANDEM_LONG_TESTS=1 runs every workload several times longer. */
const SCALE = process.env.TANDEM_LONG_TESTS === "1" ? 8 : 1;
const dir = tempDir("qcow2-interop");

/** Random writes, zeroing and discards over `disk`, mirrored into `expected`; flushes now and then. */
function workload(disk: Disk, expected: Uint8Array, seed: number, ops: number, maxLength: number): void {
  const random = seededRandom(seed);
  for (let i = 0; i < ops; i++) {
    const length = 1 + Math.floor(random() * maxLength);
    // Half the operations cluster-ish aligned, the rest anywhere, so both paths run.
    let offset = Math.floor(random() * (disk.size - length));
    if (random() < 0.5) offset -= offset % 512;
    const op = random();
    if (op < 0.7) {
      const data = new Uint8Array(length);
      for (let j = 0; j < length; j += 64) data.fill(Math.floor(random() * 256), j, j + 64);
      disk.write(offset, data);
      expected.set(data, offset);
    } else if (op < 0.85) {
      disk.writeZeroes(offset, length);
      expected.fill(0, offset, offset + length);
    } else {
      disk.discard(offset, length);
      expected.fill(0, offset, offset + length);
    }
    if (i % 37 === 36) disk.flush();
  }
}

/** qemu-img check exits 0 and qemu-img compare finds `image` identical to `expected` (as a raw file). */
function judge(image: string, expected: Uint8Array, what: string): void {
  const check = qemuCheck(image);
  assert.is(check.status, 0, `${what}: qemu-img check: ${JSON.stringify(check.report)}`);
  const raw = `${image}.expected.raw`;
  writeFileSync(raw, expected);
  const compare = runQemu("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", image, raw]);
  assert.is(compare.status, 0, `${what}: qemu-img compare: ${compare.stdout}${compare.stderr}`);
  const ours = checkImage(image);
  assert.equal([ours.errors, ours.leaks], [0, 0], `${what}: tandem's own check agrees: ${ours.messages.join("; ")}`);
}

/** What qemu-img reads from `image` (and its chain), through convert -O raw. */
function qemuBytes(image: string): Uint8Array {
  const raw = `${image}.converted.raw`;
  qemuImg("convert", "-O", "raw", image, raw);
  return new Uint8Array(readFileSync(raw));
}

/** Tandem's whole-disk read of `image`, read-only. */
function tandemBytes(image: string): Uint8Array {
  const disk = openDisk(image, { readOnly: true });
  try {
    return disk.read(0, disk.size);
  } finally {
    disk.close();
  }
}

/** Our map in qemu-img map's JSON shape. */
function ourMap(image: string): Record<string, unknown>[] {
  const disk = openDisk(image, { readOnly: true });
  try {
    return disk.map(0, disk.size).map((e: DiskExtent) => {
      const out: Record<string, unknown> = { start: e.offset, length: e.length, depth: e.depth, present: e.present, zero: e.zero, data: e.data };
      if (e.fileOffset !== undefined) out.offset = e.fileOffset;
      return out;
    });
  } finally {
    disk.close();
  }
}

/** Asserts our map equals qemu-img map --output=json, host-file holes included (support/map-agree.ts). */
function mapsAgree(image: string): void {
  assertMapsAgree(ourMap(image) as unknown as QemuMapExtent[], qemuMap(image), `map of ${image}`);
}

/** Bytes of a pattern qemu-io's write -P writes. */
function pattern(length: number, byte: number): Uint8Array {
  return new Uint8Array(length).fill(byte);
}

test("tandem-written images check clean and compare equal: 512 B, 4 KiB, 64 KiB and 2 MiB clusters", () => {
  if (!qemuTest("qcow2 written by tandem")) return;
  for (const clusterSize of [512, 4 * KiB, 64 * KiB, 2 * MiB]) {
    const image = dir.path(`written-${clusterSize}.qcow2`);
    const size = 24 * MiB + 512;
    createImage(image, "qcow2", { size, clusterSize });
    const disk = openDisk(image);
    const expected = new Uint8Array(size);
    workload(disk, expected, clusterSize, 120 * SCALE, clusterSize === 512 ? 20 * KiB : 200 * KiB);
    assert.equal(disk.read(0, size), expected, `${clusterSize}: tandem reads its own writes`);
    disk.close();
    judge(image, expected, `${clusterSize}-byte clusters`);
    assert.equal(tandemBytes(image), expected, `${clusterSize}: reopened`);
    mapsAgree(image);
  }
});

test("512-byte clusters grow the refcount table many times and stay consistent", () => {
  if (!qemuTest("qcow2 refcount table growth")) return;
  const image = dir.path("growth.qcow2");
  const size = 64 * MiB;
  createImage(image, "qcow2", { size, clusterSize: 512 });
  const disk = openDisk(image);
  const expected = new Uint8Array(size);
  // Sequential 64 KiB writes across the disk: 131072 data clusters, far past one table cluster.
  const random = seededRandom(5);
  for (let offset = 0; offset < 12 * MiB; offset += 64 * KiB) {
    const data = pattern(64 * KiB, 1 + Math.floor(random() * 255));
    disk.write(offset, data);
    expected.set(data, offset);
  }
  disk.close();
  const info = JSON.parse(qemuImg("info", "--output=json", image)) as { "actual-size": number };
  assert.ok(info["actual-size"] > 12 * MiB, "the data is there");
  judge(image, expected, "growth");
});

test("over a backing file: raw and qcow2 backings, relative names, a shorter backing", () => {
  if (!qemuTest("qcow2 over a backing file")) return;
  const base = dir.path("base.raw");
  qemuImg("create", "-f", "raw", base, "6M");
  qemuIo(base, ["write -P 0x5a 0 6M", "write -P 0x33 1M 64k"], { format: "raw" });
  const middle = dir.path("middle.qcow2");
  qemuImg("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", middle, "8M");
  qemuIo(middle, ["write -P 0x77 2M 300k", "write -z 4M 128k", "discard 5M 64k"]);
  for (const [name, backing, format] of [["over-raw", "base.raw", "raw"], ["over-qcow2", "middle.qcow2", "qcow2"]] as const) {
    const image = dir.path(`${name}.qcow2`);
    const size = 10 * MiB;
    createImage(image, "qcow2", { size, backingFile: backing, backingFormat: format, clusterSize: 64 * KiB });
    const expected = new Uint8Array(size);
    expected.set(qemuBytes(dir.path(backing)).subarray(0, size));
    const disk = openDisk(image);
    assert.equal(disk.read(0, size), expected, `${name}: the backing shows through`);
    workload(disk, expected, 7, 100 * SCALE, 150 * KiB);
    disk.close();
    judge(image, expected, name);
    assert.equal(qemuBytes(image), expected, `${name}: qemu reads the chain`);
    mapsAgree(image);
    const info = openDisk(image, { readOnly: true });
    assert.is(info.info().backingFile, backing);
    assert.is(info.info().backingFormat, format);
    info.close();
  }
});

test("sync mode: the file is consistent after every write, without flush or close", () => {
  if (!qemuTest("qcow2 sync mode")) return;
  const image = dir.path("sync.qcow2");
  const size = 4 * MiB;
  createImage(image, "qcow2", { size, clusterSize: 4 * KiB });
  const disk = openDisk(image, { sync: true });
  const expected = new Uint8Array(size);
  const random = seededRandom(11);
  for (let round = 0; round < 4; round++) {
    for (let i = 0; i < 5; i++) {
      const offset = Math.floor(random() * (size - 10 * KiB));
      const data = pattern(1 + Math.floor(random() * 10 * KiB), 1 + round * 5 + i);
      disk.write(offset, data);
      expected.set(data, offset);
    }
    disk.discard(round * 64 * KiB, 8 * KiB);
    expected.fill(0, round * 64 * KiB, round * 64 * KiB + 8 * KiB);
    // Still open and never flushed: what is in the file must be the whole truth.
    judge(image, expected, `sync mode, round ${round}`);
  }
  disk.close();
  judge(image, expected, "sync mode, closed");
});

test("lazy refcounts: dirty while open, clean after close, and qemu agrees", () => {
  if (!qemuTest("qcow2 lazy refcounts")) return;
  const image = dir.path("lazy.qcow2");
  const size = 8 * MiB;
  createImage(image, "qcow2", { size, lazyRefcounts: true, clusterSize: 16 * KiB });
  const disk = openDisk(image);
  const expected = new Uint8Array(size);
  workload(disk, expected, 13, 60 * SCALE, 100 * KiB);
  disk.flush();
  const dirty = JSON.parse(qemuImg("info", "--output=json", "-U", image)) as Record<string, unknown>;
  assert.is(dirty["dirty-flag"], true, "the dirty bit is set while refcounts are postponed");
  const lazy = (dirty["format-specific"] as { data: Record<string, unknown> }).data;
  assert.is(lazy["lazy-refcounts"], true);
  assert.is(disk.info().dirty, true);
  disk.close();
  const clean = JSON.parse(qemuImg("info", "--output=json", image)) as Record<string, unknown>;
  assert.is(clean["dirty-flag"], false);
  judge(image, expected, "lazy refcounts, closed");
});

test("a dirty image (lazy refcounts, never closed) reads as is read-only, and is repaired when opened for writing", () => {
  if (!qemuTest("qcow2 dirty image repair")) return;
  const image = dir.path("crashed-lazy.qcow2");
  const size = 4 * MiB;
  createImage(image, "qcow2", { size, lazyRefcounts: true, clusterSize: 4 * KiB });
  const disk = openDisk(image);
  const expected = new Uint8Array(size);
  workload(disk, expected, 17, 40, 64 * KiB);
  disk.flush();
  // Abandon the disk without close, as a crash would (its file handle leaks until the process ends).
  const copy = dir.path("crashed-lazy-copy.qcow2");
  copyFileSync(image, copy);
  assert.is(qemuCheck(copy).status, 2, "the refcounts really are behind");
  const readOnly = openDisk(copy, { readOnly: true });
  assert.is(readOnly.info().dirty, true);
  assert.equal(readOnly.read(0, size), expected, "read-only opens read a dirty image without repair");
  readOnly.close();
  assert.is(qemuCheck(copy).status, 2, "a read-only open does not touch the file");
  const writable = openDisk(copy);
  assert.is(writable.info().dirty, false, "opening for writing repaired it");
  writable.write(0, pattern(4 * KiB, 9));
  expected.set(pattern(4 * KiB, 9), 0);
  writable.close();
  judge(copy, expected, "repaired on open");
});

test("a dirty image qemu left behind (lazy refcounts, killed as in qemu-iotests 039) reads read-only and is repaired for writing", () => {
  if (!qemuTest("qcow2 dirty image from qemu")) return;
  const image = dir.path("qemu-killed.qcow2");
  qemuImg("create", "-f", "qcow2", "-o", "lazy_refcounts=on", image, "4M");
  const killed = runQemu("qemu-io", ["-c", "write -P 0x5a 0 512", "-c", "write -P 0x6b 1M 64k", "-c", "sigraise 9", image]);
  assert.ok(killed.status !== 0, "qemu-io died");
  assert.is(qemuCheck(image).status, 2, "qemu's refcounts are behind");
  const expected = new Uint8Array(4 * MiB);
  expected.fill(0x5a, 0, 512);
  expected.fill(0x6b, MiB, MiB + 64 * KiB);
  const readOnly = openDisk(image, { readOnly: true });
  assert.is(readOnly.info().dirty, true);
  assert.equal(readOnly.read(0, readOnly.size), expected);
  readOnly.close();
  const writable = openDisk(image);
  assert.is(writable.info().dirty, false);
  writable.write(2 * MiB, pattern(1000, 0x7c));
  expected.fill(0x7c, 2 * MiB, 2 * MiB + 1000);
  writable.close();
  judge(image, expected, "repaired qemu image");
});

test("extended L2 entries (subclusters) are refused with E_DISK_UNSUPPORTED naming them", () => {
  if (!qemuTest("qcow2 extended L2")) return;
  const image = dir.path("extended-l2.qcow2");
  qemuImg("create", "-f", "qcow2", "-o", "extended_l2=on", image, "1M");
  assert.is(errorCode(() => openDisk(image)), ErrorCode.DiskUnsupported);
  let message = "";
  try {
    openDisk(image, { readOnly: true }).close();
  } catch (error) {
    message = String(error);
  }
  assert.match(message, /extended L2/);
});

test("images qemu-img creates read back identically: v2 and v3, 512 B to 2 MiB clusters, zero and discarded clusters", () => {
  if (!qemuTest("qcow2 images made by qemu")) return;
  for (const compat of ["0.10", "1.1"]) {
    for (const clusterSize of ["512", "4k", "64k", "2M"]) {
      const image = dir.path(`qemu-${compat}-${clusterSize}.qcow2`);
      qemuImg("create", "-f", "qcow2", "-o", `compat=${compat},cluster_size=${clusterSize}`, image, "9M");
      qemuIo(image, ["write -P 0x11 0 100k", "write -P 0x22 1M 3M", "write -P 0x33 7M 1000", "write -z 1500k 600k", "discard 2M 1M", "write -P 0x44 8M 1M"]);
      const theirs = qemuBytes(image);
      assert.equal(tandemBytes(image), theirs, `${compat} ${clusterSize}`);
      mapsAgree(image);
      const disk = openDisk(image, { readOnly: true });
      assert.is(disk.info().formatSpecific?.version, compat === "0.10" ? 2 : 3);
      disk.close();
    }
  }
});

test("backing chains of three layers with relative names and -F read back identically and map alike", () => {
  if (!qemuTest("qcow2 backing chains")) return;
  const chain = tempDir("qcow2-chain");
  try {
    qemuImg("create", "-f", "raw", chain.path("l0.raw"), "5M");
    qemuIo(chain.path("l0.raw"), ["write -P 0x10 0 5M"], { format: "raw" });
    qemuImg("create", "-f", "qcow2", "-o", "compat=0.10", "-b", "l0.raw", "-F", "raw", chain.path("l1.qcow2"), "6M");
    qemuIo(chain.path("l1.qcow2"), ["write -P 0x21 64k 128k", "write -P 0x22 4M 1536k"]);
    qemuImg("create", "-f", "qcow2", "-o", "cluster_size=4k", "-b", "l1.qcow2", "-F", "qcow2", chain.path("l2.qcow2"), "8M");
    qemuIo(chain.path("l2.qcow2"), ["write -P 0x31 100k 10k", "write -z 0 16k", "discard 4M 64k", "write -P 0x32 7M 4k"]);
    const top = chain.path("l2.qcow2");
    assert.equal(tandemBytes(top), qemuBytes(top));
    mapsAgree(top);
    // And tandem writes on top of the chain still agree.
    const disk = openDisk(top);
    const expected = disk.read(0, disk.size);
    workload(disk, expected, 23, 50, 40 * KiB);
    disk.close();
    judge(top, expected, "three-layer chain");
    mapsAgree(top);
  } finally {
    chain.remove();
  }
});

test("compressed clusters (qemu-img convert -c) read back, and writes over them copy-on-write", () => {
  if (!qemuTest("qcow2 compressed clusters")) return;
  for (const [compat, clusterSize] of [["0.10", "4k"], ["1.1", "64k"], ["1.1", "512"]] as const) {
    const source = dir.path(`to-compress-${compat}-${clusterSize}.raw`);
    const random = seededRandom(31);
    const bytes = new Uint8Array(3 * MiB);
    // Compressible runs and incompressible noise, so both kinds of cluster appear.
    for (let i = 0; i < bytes.length; i += 4096) {
      if (random() < 0.5) bytes.fill(Math.floor(random() * 4), i, i + 4096);
      else for (let j = i; j < i + 4096; j++) bytes[j] = Math.floor(random() * 256);
    }
    writeFileSync(source, bytes);
    const image = dir.path(`compressed-${compat}-${clusterSize}.qcow2`);
    qemuImg("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", `compat=${compat},cluster_size=${clusterSize}`, source, image);
    const map = qemuMap(image);
    assert.ok(map.some((e) => e.data && e.offset === undefined), "some clusters are compressed (no offset in the map)");
    assert.equal(tandemBytes(image), bytes, `${compat} ${clusterSize}`);
    mapsAgree(image);
    const disk = openDisk(image);
    const expected = bytes.slice();
    workload(disk, expected, 37, 60, 20 * KiB);
    disk.close();
    judge(image, expected, `writes over compressed clusters (${compat} ${clusterSize})`);
  }
});

test("writing into a version 2 image keeps it version 2", () => {
  if (!qemuTest("qcow2 v2 writes")) return;
  const image = dir.path("v2-written.qcow2");
  qemuImg("create", "-f", "qcow2", "-o", "compat=0.10,cluster_size=4k", image, "4M");
  qemuIo(image, ["write -P 0x61 0 1M"]);
  const before = readFileSync(image).subarray(0, 72);
  const disk = openDisk(image);
  const expected = disk.read(0, disk.size);
  workload(disk, expected, 41, 80, 30 * KiB);
  disk.close();
  const after = readFileSync(image);
  assert.is(new DataView(after.buffer, after.byteOffset).getUint32(4), 2, "still version 2");
  assert.equal(after.subarray(0, 72), before, "the header is unchanged");
  judge(image, expected, "version 2");
  mapsAgree(image);
});

test("images with internal snapshots read, and refuse writes with E_DISK_UNSUPPORTED", () => {
  if (!qemuTest("qcow2 internal snapshots")) return;
  const image = dir.path("snapshots.qcow2");
  qemuImg("create", "-f", "qcow2", image, "2M");
  qemuIo(image, ["write -P 0x71 0 1M"]);
  qemuImg("snapshot", "-c", "first", image);
  qemuIo(image, ["write -P 0x72 64k 64k"]);
  assert.equal(tandemBytes(image), qemuBytes(image));
  const disk = openDisk(image);
  assert.is(errorCode(() => disk.write(0, pattern(512, 1))), ErrorCode.DiskUnsupported);
  assert.is(errorCode(() => disk.discard(0, 64 * KiB)), ErrorCode.DiskUnsupported);
  disk.close();
  assert.is(qemuCheck(image).status, 0, "untouched");
});

test.after(() => dir.remove());

test.run();
