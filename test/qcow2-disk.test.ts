import { readFileSync, writeFileSync } from "node:fs";
import { deflateRawSync } from "node:zlib";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import type { Disk } from "../host/disk/disk.ts";
import {
  H_COMPRESSION_TYPE,
  H_CLUSTER_BITS,
  H_CRYPT_METHOD,
  H_HEADER_LENGTH,
  H_INCOMPATIBLE_FEATURES,
  H_L1_SIZE,
  H_L1_TABLE_OFFSET,
  H_REFCOUNT_ORDER,
  H_REFCOUNT_TABLE_CLUSTERS,
  H_REFCOUNT_TABLE_OFFSET,
  H_VERSION,
} from "../host/disk/qcow2/header.ts";
import { compressedOffsetBits } from "../host/disk/qcow2/l2-entry.ts";
import { createImage, openDisk, probeFormat } from "../host/disk/registry.ts";
import { FileBlockFile } from "../host/disk/block-file.ts";
import { ErrorCode, TandemError } from "../host/errors.ts";
import { seededRandom } from "../host/prng.ts";
import { errorCode, failure } from "./support/errors.ts";
import { tempDir } from "./support/qemu.ts";

const test = suite("qcow2 disks: create, read and write, map and info, caches, hostile images");

const KiB = 1024;
const MiB = 1024 * KiB;
const dir = tempDir("qcow2-disk");
let counter = 0;

/** A fresh image path in the test directory. */
function fresh(name: string): string {
  return dir.path(`${counter++}-${name}`);
}

function u64(bytes: Uint8Array, at: number): number {
  return Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(at));
}
function u32(bytes: Uint8Array, at: number): number {
  return new DataView(bytes.buffer, bytes.byteOffset).getUint32(at);
}
/** Patches `image` in place: `bytes` at `at`. */
function patch(image: string, at: number, bytes: Uint8Array): void {
  const file = readFileSync(image);
  file.set(bytes, at);
  writeFileSync(image, file);
}
function be64(value: bigint): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, value);
  return out;
}
function be32(value: number): Uint8Array {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, value);
  return out;
}

/** A 64 KiB-cluster image with guest cluster 0 written (L2 table and data allocated), and where its tables are. */
function imageWithData(name: string, size = 4 * MiB): { image: string; l1: number; l2: number; data: number } {
  const image = fresh(name);
  createImage(image, "qcow2", { size });
  const disk = openDisk(image);
  disk.write(0, new Uint8Array(64 * KiB).fill(0xab));
  disk.close();
  const bytes = new Uint8Array(readFileSync(image));
  const l1 = u64(bytes, H_L1_TABLE_OFFSET);
  const l2 = u64(bytes, l1) % 2 ** 56;
  const data = u64(bytes, l2) % 2 ** 56;
  return { image, l1, l2, data };
}

test("create: QEMU's layout for a new image, and its options", () => {
  const image = fresh("layout.qcow2");
  createImage(image, "qcow2", { size: 1024 * MiB });
  const bytes = new Uint8Array(readFileSync(image));
  assert.is(u32(bytes, H_VERSION), 3);
  assert.is(u32(bytes, H_CLUSTER_BITS), 16);
  assert.is(u64(bytes, H_REFCOUNT_TABLE_OFFSET), 0x10000);
  assert.is(u32(bytes, H_REFCOUNT_TABLE_CLUSTERS), 1);
  assert.is(u64(bytes, H_L1_TABLE_OFFSET), 0x30000);
  assert.is(u32(bytes, H_L1_SIZE), 2);
  assert.is(u32(bytes, H_REFCOUNT_ORDER), 4);
  assert.is(u32(bytes, H_HEADER_LENGTH), 112);
  assert.is(bytes.length, 4 * 64 * KiB);
  const file = FileBlockFile.open(image, { readOnly: true });
  assert.is(probeFormat(file).name, "qcow2");
  file.close();

  const disk = openDisk(image, { readOnly: true });
  const info = disk.info();
  assert.is(info.format, "qcow2");
  assert.is(info.virtualSize, 1024 * MiB);
  assert.is(info.clusterSize, 64 * KiB);
  assert.is(info.dirty, false);
  assert.equal(info.formatSpecific, { version: 3, compat: "1.1", refcountBits: 16, lazyRefcounts: false, corrupt: false, snapshots: 0 });
  assert.equal(disk.map(0, disk.size), [{ offset: 0, length: 1024 * MiB, present: false, zero: true, data: false, depth: 0 }]);
  disk.close();

  const lazy = fresh("lazy.qcow2");
  createImage(lazy, "qcow2", { size: MiB, lazyRefcounts: true, clusterSize: 512 });
  const lazyDisk = openDisk(lazy, { readOnly: true });
  assert.is(lazyDisk.info().formatSpecific?.lazyRefcounts, true);
  assert.is(lazyDisk.info().clusterSize, 512);
  lazyDisk.close();

  for (const clusterSize of [256, 3000, 4 * MiB]) {
    assert.is(errorCode(() => createImage(fresh("bad.qcow2"), "qcow2", { size: MiB, clusterSize })), ErrorCode.BadArgument, `cluster size ${clusterSize}`);
  }
  const odd = fresh("odd.qcow2");
  createImage(odd, "qcow2", { size: 1000 });
  const oddDisk = openDisk(odd, { readOnly: true });
  assert.is(oddDisk.size, 1024, "a size that is not whole sectors rounds up, as qemu-img create does");
  oddDisk.close();
  assert.is(errorCode(() => createImage(fresh("fmt.qcow2"), "qcow2", { size: MiB, backingFormat: "raw" })), ErrorCode.BadArgument);
  // 512-byte clusters and 64 GiB need several refcount blocks for the L1 table alone.
  const big = fresh("big-l1.qcow2");
  createImage(big, "qcow2", { size: 64 * 1024 * MiB, clusterSize: 512 });
  const bigDisk = openDisk(big);
  bigDisk.write(60 * 1024 * MiB, new Uint8Array(512).fill(7));
  assert.equal(bigDisk.read(60 * 1024 * MiB, 512), new Uint8Array(512).fill(7));
  bigDisk.close();
});

test("a 64 TiB disk: map, discard and writeZeroes over empty L2 ranges take one step per L1 entry", () => {
  const image = fresh("huge.qcow2");
  const size = 64 * 1024 * 1024 * MiB;
  createImage(image, "qcow2", { size });
  const disk = openDisk(image);
  const started = performance.now();
  assert.equal(disk.map(0, size), [{ offset: 0, length: size, present: false, zero: true, data: false, depth: 0 }]);
  disk.discard(0, size);
  disk.writeZeroes(0, size);
  disk.write(size - 512, new Uint8Array(512).fill(1));
  assert.equal(disk.read(size - 1024, 1024), new Uint8Array(1024).fill(1, 512));
  // Unallocated up to the last cluster, then that cluster; its unwritten start may map as a host
  // hole (zero), since this mostly-hole file looks metadata-preallocated (preallocation.ts).
  const extents = disk.map(0, size);
  assert.ok(extents.length === 2 || extents.length === 3, JSON.stringify(extents));
  assert.equal([extents[0].offset, extents[0].length, extents[0].present], [0, size - 64 * KiB, false]);
  const last = extents[extents.length - 1];
  assert.equal([last.offset + last.length, last.zero, last.data], [size, false, true]);
  assert.ok(performance.now() - started < 30_000, "bounded work (a guard against a hang, not a speed target)");
  disk.close();
});

test("random I/O round-trips through an L2 cache of two tables, across reopen, for several cluster sizes", () => {
  for (const clusterSize of [512, 4 * KiB, 64 * KiB]) {
    const image = fresh(`rt-${clusterSize}.qcow2`);
    const size = 8 * MiB;
    createImage(image, "qcow2", { size, clusterSize });
    const expected = new Uint8Array(size);
    const random = seededRandom(clusterSize);
    for (let session = 0; session < 3; session++) {
      const disk = openDisk(image, { l2CacheBytes: 2 * clusterSize });
      for (let i = 0; i < 150; i++) {
        const length = 1 + Math.floor(random() * 3 * clusterSize);
        const offset = Math.floor(random() * (size - length));
        const op = random();
        if (op < 0.75) {
          const data = new Uint8Array(length).fill(1 + Math.floor(random() * 255));
          disk.write(offset, data);
          expected.set(data, offset);
        } else if (op < 0.9) {
          disk.writeZeroes(offset, length);
          expected.fill(0, offset, offset + length);
        } else {
          disk.discard(offset, length);
          expected.fill(0, offset, offset + length);
        }
        if (i % 20 === 0) {
          const at = Math.floor(random() * (size - 100 * KiB));
          assert.equal(disk.read(at, 100 * KiB), expected.subarray(at, at + 100 * KiB), `${clusterSize}: read during session ${session}`);
        }
      }
      assert.equal(disk.read(0, size), expected, `${clusterSize}: session ${session}`);
      disk.close();
    }
    const reopened = openDisk(image, { readOnly: true });
    assert.equal(reopened.read(0, size), expected, `${clusterSize}: reopened`);
    reopened.close();
  }
});

test("map and writeZeroes/discard: zero clusters keep or free their host cluster; over a backing file discard still reads zeros", () => {
  const base = fresh("base.raw");
  writeFileSync(base, new Uint8Array(MiB).fill(0x42));
  const image = fresh("mapped.qcow2");
  createImage(image, "qcow2", { size: 2 * MiB, backingFile: base, backingFormat: "raw" });
  const disk = openDisk(image);
  const C = 64 * KiB;
  disk.write(0, new Uint8Array(3 * C).fill(1));
  disk.writeZeroes(C, C);
  disk.discard(2 * C, C);
  disk.discard(4 * C, C);
  disk.writeZeroes(6 * C + 512, 1024);
  const map = disk.map(0, 8 * C);
  const at = (offset: number) => map.find((e) => e.offset <= offset && offset < e.offset + e.length)!;
  assert.is(at(0).data, true);
  assert.is(at(0).depth, 0);
  assert.ok(at(0).fileOffset !== undefined);
  assert.equal([at(C).zero, at(C).data, at(C).present], [true, false, true]);
  assert.ok(at(C).fileOffset !== undefined, "writeZeroes keeps the host cluster (preallocated zeros)");
  assert.equal([at(2 * C).zero, at(2 * C).fileOffset], [true, undefined], "discard frees it");
  assert.equal([at(4 * C).zero, at(4 * C).depth], [true, 0], "discarding an unallocated cluster over a backing file makes it a zero cluster");
  assert.equal([at(3 * C).depth, at(3 * C).data], [1, true], "untouched clusters come from the backing file");
  assert.equal([at(6 * C).depth, at(6 * C).data], [0, true], "a partial zeroing over backing data allocates the cluster");
  const expected = new Uint8Array(8 * C).fill(0x42);
  expected.fill(1, 0, C);
  expected.fill(0, C, 3 * C);
  expected.fill(0, 4 * C, 5 * C);
  expected.fill(0, 6 * C + 512, 6 * C + 1536);
  assert.equal(disk.read(0, 8 * C), expected);
  // Past the backing file's end, unallocated clusters read zeros and map as absent.
  const tail = disk.map(MiB, MiB);
  assert.equal(tail, [{ offset: MiB, length: MiB, present: false, zero: true, data: false, depth: 0 }]);
  assert.equal(disk.read(MiB - 10, 20), new Uint8Array(20).fill(0x42, 0, 10));
  disk.close();
});

test("write-back: a flush writes metadata; close leaves nothing behind; sync mode writes at once", () => {
  const image = fresh("writeback.qcow2");
  createImage(image, "qcow2", { size: 4 * MiB });
  const before = readFileSync(image);
  const disk = openDisk(image);
  disk.write(5 * 64 * KiB, new Uint8Array(4096).fill(3));
  const l1 = u64(new Uint8Array(before), H_L1_TABLE_OFFSET);
  assert.is(u64(new Uint8Array(readFileSync(image)), l1), 0, "the L1 entry waits for a flush");
  disk.flush();
  assert.ok(u64(new Uint8Array(readFileSync(image)), l1) !== 0, "flushed");
  disk.close();

  const synced = fresh("sync.qcow2");
  createImage(synced, "qcow2", { size: 4 * MiB });
  const syncDisk = openDisk(synced, { sync: true });
  syncDisk.write(0, new Uint8Array(512).fill(9));
  assert.ok(u64(new Uint8Array(readFileSync(synced)), l1) !== 0, "sync mode: metadata is in the file when write returns");
  const reader = openDisk(synced, { readOnly: true });
  assert.equal(reader.read(0, 512), new Uint8Array(512).fill(9));
  reader.close();
  syncDisk.close();
});

test("the corrupt bit: reads work, writes fail with E_DISK_READ_ONLY saying how to repair", () => {
  const { image } = imageWithData("corrupt.qcow2");
  patch(image, H_INCOMPATIBLE_FEATURES, be64(2n));
  const disk = openDisk(image);
  assert.equal(disk.read(0, 16), new Uint8Array(16).fill(0xab));
  assert.is(disk.info().formatSpecific?.corrupt, true);
  const error = failure(() => disk.write(0, new Uint8Array(1)));
  assert.is(error.code, ErrorCode.DiskReadOnly);
  assert.match(error.message, /qemu-img check -r all/);
  assert.is(errorCode(() => disk.discard(0, 512)), ErrorCode.DiskReadOnly);
  disk.close();
});

test("hostile tables: L1 and L2 offsets past the end, unaligned, with reserved bits; refcount blocks past the end", () => {
  type Layout = { image: string; l1: number; l2: number; data: number };
  // "write" allocates (at 2 MiB); "overwrite" writes over guest cluster 0 in place.
  const cases: [string, (t: Layout) => void, "read" | "write" | "overwrite"][] = [
    ["L1 entry past the end", ({ image, l1 }) => patch(image, l1, be64((1n << 63n) | (1n << 40n))), "read"],
    ["L1 entry unaligned", ({ image, l1, l2 }) => patch(image, l1, be64(BigInt(l2 + 4096))), "read"],
    ["L1 reserved bits", ({ image, l1, l2 }) => patch(image, l1, be64(BigInt(l2) | (1n << 60n))), "read"],
    ["L2 entry past the end", ({ image, l2 }) => patch(image, l2, be64((1n << 63n) | (1n << 45n))), "read"],
    ["L2 entry unaligned", ({ image, l2, data }) => patch(image, l2, be64((1n << 63n) | BigInt(data + 512))), "read"],
    ["L2 reserved bits", ({ image, l2, data }) => patch(image, l2, be64((1n << 63n) | (1n << 57n) | BigInt(data))), "read"],
    ["compressed data past the end", ({ image, l2 }) => patch(image, l2, be64((1n << 62n) | (1n << 40n))), "read"],
    ["refcount block past the end", ({ image }) => patch(image, 64 * KiB, be64(1n << 40n)), "write"],
    ["refcount table entry unaligned", ({ image }) => patch(image, 64 * KiB, be64(2n * 64n * 1024n + 8n)), "write"],
    // Overlaps with the fixed metadata: a write must not turn into damage to the image's own tables.
    ["L2 entry inside the L1 table", ({ image, l1, l2 }) => patch(image, l2, be64((1n << 63n) | BigInt(l1))), "overwrite"],
    ["L1 entry at the refcount table", ({ image, l1 }) => patch(image, l1, be64((1n << 63n) | 65536n)), "read"],
    ["refcount block at the L1 table", ({ image, l1 }) => patch(image, 64 * KiB, be64(BigInt(l1))), "write"],
  ];
  for (const [name, damage, op] of cases) {
    const layout = imageWithData(`${name}.qcow2`);
    damage(layout);
    const disk = openDisk(layout.image);
    const run = {
      read: () => disk.read(0, 4096),
      write: () => disk.write(2 * MiB, new Uint8Array(4096)),
      overwrite: () => disk.write(0, new Uint8Array(4096)),
    }[op];
    const before = readFileSync(layout.image).subarray(0, 4 * 64 * KiB);
    let error: TandemError | undefined;
    try {
      run();
    } catch (caught) {
      if (!(caught instanceof TandemError)) throw caught;
      error = caught;
    }
    assert.ok(error !== undefined, `${name}: no error`);
    // A write onto metadata is refused by the overlap check, which marks the image corrupt (header byte 79, bit 1).
    const overlap = op === "overwrite";
    assert.is(error.code, overlap ? ErrorCode.DiskCorrupt : ErrorCode.DiskFormat, `${name}: ${error.message}`);
    assert.ok(error.message.includes(layout.image), `${name}: the message names the file`);
    const after = readFileSync(layout.image).subarray(0, 4 * 64 * KiB);
    assert.is(after[79], overlap ? before[79] | 2 : before[79], `${name}: the corrupt bit`);
    after[79] = before[79];
    assert.equal(after, before, `${name}: header, refcount table and block, L1 untouched`);
    assert.is(errorCode(() => disk.map(0, disk.size)) ?? ErrorCode.DiskFormat, ErrorCode.DiskFormat, `${name}: map`);
    disk.close();
  }
});

test("hostile headers: huge l1_size, cluster_bits out of range, unknown incompatible bits, zstd, encryption", () => {
  const expectations: [string, number, Uint8Array, string, RegExp][] = [
    ["huge l1_size", H_L1_SIZE, be32(0x7fffffff), ErrorCode.DiskFormat, /L1 table/],
    ["cluster_bits 8", H_CLUSTER_BITS, be32(8), ErrorCode.DiskFormat, /cluster_bits/],
    ["cluster_bits 22", H_CLUSTER_BITS, be32(22), ErrorCode.DiskFormat, /cluster_bits/],
    ["unknown incompatible bit", H_INCOMPATIBLE_FEATURES, be64(1n << 5n), ErrorCode.DiskUnsupported, /bit 5/],
    ["encryption", H_CRYPT_METHOD, be32(2), ErrorCode.DiskUnsupported, /encrypt/],
  ];
  for (const [name, at, bytes, code, message] of expectations) {
    const { image } = imageWithData(`${name}.qcow2`);
    patch(image, at, bytes);
    const error = failure(() => openDisk(image));
    assert.is(error.code, code, `${name}: ${error.message}`);
    assert.match(error.message, message, name);
  }
  const { image } = imageWithData("zstd.qcow2");
  patch(image, H_INCOMPATIBLE_FEATURES, be64(1n << 3n));
  patch(image, H_COMPRESSION_TYPE, new Uint8Array([1]));
  const zstd = failure(() => openDisk(image));
  assert.is(zstd.code, ErrorCode.DiskUnsupported);
  assert.match(zstd.message, /compression type 1/);
});

test("a ZERO flag in a version 2 image is corruption", () => {
  const { image, l2 } = imageWithData("v2-zero.qcow2");
  // A version 2 header is the first 72 bytes; what follows reads as the end-of-extensions marker.
  patch(image, H_VERSION, be32(2));
  assert.equal(openDisk(image, { readOnly: true }).read(0, 4), new Uint8Array(4).fill(0xab), "still readable as version 2");
  patch(image, l2 + 8, be64(1n));
  const disk = openDisk(image, { readOnly: true });
  assert.is(disk.info().formatSpecific?.version, 2);
  assert.is(errorCode(() => disk.read(64 * KiB, 512)), ErrorCode.DiskFormat);
  disk.close();
});

test("compressed clusters: a well-formed one reads back, garbage fails with E_DISK_FORMAT", () => {
  const { image, l2, data } = imageWithData("compressed.qcow2");
  const cluster = new Uint8Array(64 * KiB);
  for (let i = 0; i < cluster.length; i++) cluster[i] = i % 251;
  const deflated = deflateRawSync(cluster);
  // Put the deflated bytes in the data cluster and describe them with a compressed descriptor.
  patch(image, data, deflated);
  const sectors = Math.ceil(deflated.length / 512) - 1;
  const descriptor = (1n << 62n) | (BigInt(sectors) << BigInt(compressedOffsetBits(16))) | BigInt(data);
  patch(image, l2, be64(descriptor));
  const disk = openDisk(image);
  assert.equal(disk.read(0, 64 * KiB), cluster);
  assert.equal(disk.map(0, 64 * KiB), [{ offset: 0, length: 64 * KiB, present: true, zero: false, data: true, depth: 0 }]);
  // Copy-on-write out of the compressed cluster.
  disk.write(100, new Uint8Array([1, 2, 3]));
  const expected = cluster.slice();
  expected.set([1, 2, 3], 100);
  assert.equal(disk.read(0, 64 * KiB), expected);
  disk.close();
  assert.equal(openDisk(image, { readOnly: true }).read(0, 64 * KiB), expected);

  const bad = imageWithData("bad-compressed.qcow2");
  patch(bad.image, bad.data, new Uint8Array(4096).fill(0xff));
  patch(bad.image, bad.l2, be64((1n << 62n) | (3n << BigInt(compressedOffsetBits(16))) | BigInt(bad.data)));
  const badDisk = openDisk(bad.image, { readOnly: true });
  const error = failure(() => badDisk.read(0, 512));
  assert.is(error.code, ErrorCode.DiskFormat);
  assert.match(error.message, /inflate/);
  badDisk.close();
});

test("a backing chain that loops fails with E_DISK_BACKING; noBacking opens for info only", () => {
  const a = fresh("a.qcow2");
  const b = fresh("b.qcow2");
  createImage(a, "qcow2", { size: MiB, backingFile: b, backingFormat: "qcow2" });
  createImage(b, "qcow2", { size: MiB, backingFile: a, backingFormat: "qcow2" });
  const error = failure(() => openDisk(a));
  assert.is(error.code, ErrorCode.DiskBacking);
  assert.match(error.message, /loop/);
  const alone = openDisk(a, { noBacking: true, readOnly: true });
  assert.is(alone.info().backingFile, b);
  assert.is(alone.backing, null);
  assert.is(errorCode(() => alone.read(0, 512)), ErrorCode.DiskBacking);
  alone.close();
});

test("bit flips in metadata never crash: every outcome is data or a TandemError", () => {
  const random = seededRandom(99);
  const { image } = imageWithData("fuzz-base.qcow2", 2 * MiB);
  const pristine = new Uint8Array(readFileSync(image));
  // Metadata lives in the first clusters: header, refcount table and block, L1, L2.
  const metadataEnd = 5 * 64 * KiB;
  for (let round = 0; round < 60; round++) {
    const bytes = pristine.slice();
    for (let flips = 0; flips < 4; flips++) {
      const at = round % 3 === 0 ? Math.floor(random() * 112) : Math.floor(random() * metadataEnd);
      bytes[at] ^= 1 << Math.floor(random() * 8);
    }
    const target = dir.path("fuzz.qcow2");
    writeFileSync(target, bytes);
    let disk: Disk | null = null;
    try {
      disk = openDisk(target);
      disk.read(0, Math.min(disk.size, MiB));
      disk.map(0, Math.min(disk.size, MiB));
      disk.write(0, new Uint8Array(70 * KiB).fill(5));
      disk.discard(128 * KiB, 64 * KiB);
      disk.flush();
    } catch (error) {
      assert.ok(error instanceof TandemError, `round ${round}: ${String(error)}`);
    } finally {
      try {
        disk?.close();
      } catch (error) {
        assert.ok(error instanceof TandemError, `round ${round}: close: ${String(error)}`);
      }
    }
  }
});

test.after(() => dir.remove());

test.run();
