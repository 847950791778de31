import { readFileSync } from "node:fs";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { openDisk } from "../../../host/disk/registry.ts";
import { ErrorCode, TandemError } from "../../../host/errors.ts";
import { NbdServer } from "../../../host/nbd/server.ts";
import { failure } from "../../support/errors.ts";
import { runTool } from "../../support/nbd.ts";
import { qemuCheck, qemuImg, qemuIo, qemuTest, runQemu, tempDir } from "../../support/qemu.ts";
import { COPIED, CORRUPT_BIT, incompatibleFeatures, layoutOf, offsetOf, patchBytes, patchU64 } from "./image-layout.ts";

const test = suite("qcow2 overlap checks: a write onto the image's own metadata is refused and marks the image corrupt");
const dir = tempDir("qcow2-overlap");
test.after(() => dir.remove());

const KiB = 1024;
let serial = 0;

/** A qcow2 image whose first 1 MiB qemu-io filled with 0x11; returns its path. */
function filledImage(name: string, options: string): string {
  const path = dir.path(`${serial++}-${name}.qcow2`);
  qemuImg("create", "-q", "-f", "qcow2", "-o", options, path, "64M");
  qemuIo(path, ["write -P 0x11 0 1M"]);
  return path;
}

/** qemu-img check's corruption count. */
function qemuErrors(path: string): number {
  return (qemuCheck(path).report.corruptions as number | undefined) ?? 0;
}

/** Points guest cluster `cluster`'s L2 entry (with COPIED, so it is written in place) at `target`. */
function pointAt(path: string, cluster: number, target: (l: ReturnType<typeof layoutOf>) => number): void {
  const layout = layoutOf(path);
  const l2 = offsetOf(layout.l1[0].value);
  patchU64(path, l2 + cluster * 8, COPIED | BigInt(target(layout)));
}

// The cases: an L2 entry at refcount block 0, and at the L2 table itself, written through
// `tandem serve`'s NBD server by qemu-io, which must see the write fail, as QEMU's own does.
for (const [name, target] of [
  ["refcount block 0", (l: ReturnType<typeof layoutOf>) => offsetOf(l.refcountTable[0].value)],
  ["the L2 table itself", (l: ReturnType<typeof layoutOf>) => offsetOf(l.l1[0].value)],
] as const) {
  test(`NBD: a guest write through an L2 entry pointing at ${name} is refused and sets the corrupt bit`, async () => {
    if (!qemuTest("overlap over NBD")) return;
    const path = filledImage("nbd", "cluster_size=64k");
    pointAt(path, 3, target);
    const errorsBefore = qemuErrors(path);
    const disk = openDisk(path);
    const server = await NbdServer.listen({ disk, exportName: "" }, { host: "127.0.0.1", port: 0 });
    let result;
    try {
      result = await runTool("qemu-io", ["-f", "raw", "-c", `write -P 0x77 ${3 * 64 * KiB} 64k`, "-c", `write -P 0x77 ${8 * 64 * KiB} 4k`, "-c", "read -P 0x11 0 64k", server.uri]);
    } finally {
      await server.close();
      disk.close();
    }
    const output = result.stdout + result.stderr;
    assert.match(output, /write failed: Input\/output error/, output);
    assert.not.match(output, /wrote 65536\/65536/, output);
    // After the refusal the disk takes no more writes, but still reads.
    assert.match(output, /write failed: Operation not permitted/, output);
    assert.match(output, /read 65536\/65536/, output);
    assert.is(incompatibleFeatures(path) & CORRUPT_BIT, CORRUPT_BIT, "corrupt bit set");
    assert.ok(qemuErrors(path) <= errorsBefore, `qemu-img check finds no new damage (${errorsBefore} before)`);
    assert.match(qemuImg("info", path), /corrupt: true/);
  });
}

test("every kind of metadata is protected from data writes, v2 and v3, and the refused bytes never land", () => {
  if (!qemuTest("overlap kinds")) return;
  // (The header cannot be a target: an entry with offset 0 means "unallocated".)
  const targets: [string, (l: ReturnType<typeof layoutOf>) => number][] = [
    ["L1 table", (l) => l.l1Offset],
    ["refcount table", (l) => l.refcountTableOffset],
    ["refcount block", (l) => offsetOf(l.refcountTable[0].value)],
    ["L2 table", (l) => offsetOf(l.l1[0].value)],
  ];
  for (const compat of ["0.10", "1.1"]) {
    for (const [name, target] of targets) {
      const what = `${name}, compat ${compat}`;
      const path = filledImage("kinds", `cluster_size=4k,compat=${compat}`);
      pointAt(path, 5, target);
      const before = readFileSync(path);
      const disk = openDisk(path);
      const error = failure(() => disk.write(5 * 4 * KiB + 512, new Uint8Array(512).fill(0x77)));
      assert.is(error.code, ErrorCode.DiskCorrupt, `${what}: ${error.message}`);
      assert.match(error.message, /marking image as corrupt: preventing invalid write on metadata/, what);
      assert.is(disk.info().formatSpecific?.corrupt, true, `${what}: the disk says it is corrupt`);
      assert.is(failure(() => disk.write(0, new Uint8Array(512))).code, ErrorCode.DiskReadOnly, `${what}: later writes refused`);
      disk.close();
      const after = readFileSync(path);
      const v3 = compat === "1.1";
      // Only the corrupt bit (version 3; version 2 has no field for it) changed.
      assert.is(incompatibleFeatures(path), v3 ? CORRUPT_BIT : 0n, what);
      if (v3) after[79] &= ~2;
      assert.ok(Buffer.compare(after, before) === 0, `${what}: nothing else in the file changed`);
    }
  }
});

test("overlapChecks: false (the disk bench's unchecked side) lets the same write through: the check is what refuses it", () => {
  if (!qemuTest("overlap checks off")) return;
  const path = filledImage("unchecked", "cluster_size=4k");
  pointAt(path, 5, (l) => offsetOf(l.refcountTable[0].value));
  const disk = openDisk(path, { overlapChecks: false });
  disk.write(5 * 4 * KiB + 512, new Uint8Array(512).fill(0x77));
  disk.close();
  assert.is(incompatibleFeatures(path) & CORRUPT_BIT, 0n, "no corrupt bit");
  assert.ok(qemuErrors(path) > 0, "the refcount block was overwritten");
});

test("an allocation onto metadata whose refcount is wrongly 0 is refused too, and a corrupt image opens read-only", () => {
  if (!qemuTest("overlap allocation")) return;
  const path = filledImage("alloc", "cluster_size=4k");
  const layout = layoutOf(path);
  // Refcount of the L2 table's cluster set to 0: the next allocation would hand it out as data.
  const l2 = offsetOf(layout.l1[0].value);
  const block = offsetOf(layout.refcountTable[0].value);
  const bits = layout.refcountBits;
  const at = block + ((l2 / layout.clusterSize) * bits) / 8;
  patchBytes(path, at, new Uint8Array(bits / 8));
  const disk = openDisk(path);
  // Allocations take the lowest free cluster: write where nothing is allocated until one reaches the L2 table.
  let error: TandemError | undefined;
  for (let i = 0; i < 64 && error === undefined; i++) {
    try {
      disk.write((1 << 20) + i * 4 * KiB, new Uint8Array(4 * KiB).fill(0x22));
    } catch (caught) {
      if (!(caught instanceof TandemError)) throw caught;
      error = caught;
    }
  }
  assert.ok(error !== undefined, "an allocation reached the L2 table");
  assert.is(error.code, ErrorCode.DiskCorrupt, error.message);
  assert.match(error.message, /active L2 table/);
  disk.close();
  assert.is(incompatibleFeatures(path) & CORRUPT_BIT, CORRUPT_BIT);
  // The L2 table still maps the first 1 MiB: qemu-io reads it back.
  assert.is(runQemu("qemu-io", ["-r", "-c", "read -P 0x11 0 1M", path]).status, 0);

  const reopened = openDisk(path);
  assert.is(reopened.readOnly, true, "a corrupt image opens read-only");
  const refused = failure(() => reopened.write(0, new Uint8Array(512)));
  assert.is(refused.code, ErrorCode.DiskReadOnly);
  assert.match(refused.message, /marked corrupt.*repair it with tandem img check -r all/);
  reopened.close();
});

test.run();
