import { writeFileSync } from "node:fs";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { FileBlockFile } from "../host/disk/block-file.ts";
import { mergeExtents } from "../host/disk/disk.ts";
import { checkImage, createImage, formatByName, openDisk, probeFormat, resolveBackingPath } from "../host/disk/registry.ts";
import { ErrorCode } from "../host/errors.ts";
import { seededRandom } from "../host/prng.ts";
import { errorCode } from "./support/errors.ts";
import { tempDir } from "./support/qemu.ts";

const test = suite("disks: raw images, the Disk checks and the format registry");

test("a raw disk reads what was written, at any offset and length, and keeps it across a reopen", () => {
  const tmp = tempDir("raw");
  try {
    const path = tmp.path("disk.raw");
    createImage(path, "raw", { size: 1 << 20 });
    const model = new Uint8Array(1 << 20);
    const random = seededRandom(7);
    const disk = openDisk(path);
    assert.is(disk.format, "raw");
    assert.is(disk.size, 1 << 20);
    for (let i = 0; i < 200; i++) {
      const offset = Math.floor(random() * (model.length - 1));
      const length = 1 + Math.floor(random() * Math.min(9000, model.length - offset - 1));
      const data = new Uint8Array(length).map(() => Math.floor(random() * 256));
      disk.write(offset, data);
      model.set(data, offset);
    }
    disk.writeZeroes(4096, 10_000);
    model.fill(0, 4096, 14_096);
    disk.discard(500_000, 3);
    model.fill(0, 500_000, 500_003);
    assert.equal(disk.read(0, model.length), model);
    disk.close();
    const again = openDisk(path, { readOnly: true });
    const into = new Uint8Array(model.length);
    again.readInto(0, into);
    assert.equal(into, model);
    again.close();
  } finally {
    tmp.remove();
  }
});

test("accesses outside the disk, writes to a read-only disk and calls after close are refused with codes", () => {
  const tmp = tempDir("raw");
  try {
    const path = tmp.path("disk.raw");
    createImage(path, "raw", { size: 4096 });
    const ro = openDisk(path, { readOnly: true });
    assert.is(errorCode(() => ro.read(4000, 97)), ErrorCode.OutOfRange);
    assert.is(errorCode(() => ro.read(-1, 1)), ErrorCode.OutOfRange);
    assert.is(errorCode(() => ro.read(0.5, 1)), ErrorCode.OutOfRange);
    assert.is(errorCode(() => ro.write(0, new Uint8Array(1))), ErrorCode.DiskReadOnly);
    assert.is(errorCode(() => ro.discard(0, 512)), ErrorCode.DiskReadOnly);
    ro.close();
    assert.is(errorCode(() => ro.read(0, 1)), ErrorCode.InvalidState);
    assert.is(errorCode(() => createImage(path, "raw", { size: 4096 })), ErrorCode.DiskIo, "an existing file is not overwritten");
    assert.is(errorCode(() => openDisk(tmp.path("missing.raw"))), ErrorCode.DiskIo);
    assert.is(errorCode(() => createImage(tmp.path("x.raw"), "vmdk", { size: 1 })), ErrorCode.DiskUnsupported);
    assert.is(errorCode(() => createImage(tmp.path("y.raw"), "raw", { size: 1, backingFile: "disk.raw" })), ErrorCode.DiskUnsupported);
  } finally {
    tmp.remove();
  }
});

test("a file no format claims is raw; raw has nothing to check", () => {
  const tmp = tempDir("raw");
  try {
    const path = tmp.path("data.bin");
    writeFileSync(path, new Uint8Array(8192).fill(0x5a));
    const file = FileBlockFile.open(path, { readOnly: true });
    assert.is(probeFormat(file).name, "raw");
    file.close();
    const report = checkImage(path);
    assert.is(report.format, "raw");
    assert.is(report.errors + report.leaks, 0);
    assert.is(formatByName("raw").name, "raw");
  } finally {
    tmp.remove();
  }
});

test("backing names resolve against the naming image's directory; protocol URLs are refused", () => {
  assert.is(resolveBackingPath("/images/top.qcow2", "base.raw"), "/images/base.raw");
  assert.is(resolveBackingPath("/images/sub/top.qcow2", "../base.raw"), "/images/base.raw");
  assert.is(resolveBackingPath("/images/top.qcow2", "/elsewhere/base.raw"), "/elsewhere/base.raw");
  assert.is(errorCode(() => resolveBackingPath("/images/top.qcow2", "nbd://host/export")), ErrorCode.DiskUnsupported);
});

test("a raw disk maps its holes as zeros and its data as data; neighbouring extents that agree merge", () => {
  const tmp = tempDir("raw");
  try {
    const path = tmp.path("disk.raw");
    createImage(path, "raw", { size: 65536 });
    const disk = openDisk(path);
    // A new raw image is one hole: zeros, not data (as qemu-img map says of a sparse file).
    assert.equal(disk.map(4096, 8192), [{ offset: 4096, length: 8192, present: true, zero: true, data: false, depth: 0, fileOffset: 4096 }]);
    disk.write(8192, new Uint8Array(4096).fill(1));
    assert.equal(disk.map(4096, 12288), [
      { offset: 4096, length: 4096, present: true, zero: true, data: false, depth: 0, fileOffset: 4096 },
      { offset: 8192, length: 4096, present: true, zero: false, data: true, depth: 0, fileOffset: 8192 },
      { offset: 12288, length: 4096, present: true, zero: true, data: false, depth: 0, fileOffset: 12288 },
    ]);
    disk.close();
    const merged = mergeExtents([
      { offset: 0, length: 10, present: true, zero: false, data: true, depth: 0, fileOffset: 100 },
      { offset: 10, length: 5, present: true, zero: false, data: true, depth: 0, fileOffset: 110 },
      { offset: 15, length: 5, present: true, zero: false, data: true, depth: 0, fileOffset: 300 },
      { offset: 20, length: 5, present: false, zero: true, data: false, depth: 0 },
      { offset: 25, length: 5, present: false, zero: true, data: false, depth: 0 },
    ]);
    assert.equal(merged.map((e) => [e.offset, e.length]), [[0, 15], [15, 5], [20, 10]]);
  } finally {
    tmp.remove();
  }
});

test.run();
