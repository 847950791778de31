import { closeSync, copyFileSync, openSync, readFileSync, readSync, truncateSync, writeFileSync, writeSync } from "node:fs";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { type BlockFile, FileBlockFile } from "../host/disk/block-file.ts";
import type { CheckReport } from "../host/disk/format.ts";
import { checkQcow2 } from "../host/disk/qcow2/check.ts";
import { type Qcow2Header, geometry, parseHeader } from "../host/disk/qcow2/header.ts";
import { readRefcount, refcountPosition, writeRefcount } from "../host/disk/qcow2/refcount-entry.ts";
import { ErrorCode, TandemError } from "../host/errors.ts";
import { seededRandom } from "../host/prng.ts";
import { errorCode } from "./support/errors.ts";
import { qemuCheck, qemuImg, qemuMap, qemuTest, runQemu, tempDir } from "./support/qemu.ts";

const test = suite("qcow2 check and repair: agrees with qemu-img check and repairs what it finds");
const dir = tempDir("qcow2-check");
test.after(() => dir.remove());

let serial = 0;
/** A fresh path in the temporary directory. */
function fresh(name: string): string {
  return dir.path(`${serial++}-${name}`);
}

/** Our check of `path` (read-only unless repairing). */
function ourCheck(path: string, repair = false): CheckReport {
  const file = FileBlockFile.open(path, { readOnly: !repair });
  try {
    return checkQcow2(file, { repair });
  } finally {
    file.close();
  }
}

/** qemu-img check's verdict: exit status, corruptions, leaks and image end offset. */
function qemuVerdict(path: string): { status: number; errors: number; leaks: number; end: number | undefined } {
  const { status, report } = qemuCheck(path);
  return {
    status,
    errors: (report.corruptions as number | undefined) ?? 0,
    leaks: (report.leaks as number | undefined) ?? 0,
    end: report["image-end-offset"] as number | undefined,
  };
}

/** Asserts our counts equal qemu-img's, with both reports in the failure message. */
function agreeWithQemu(path: string, what: string): CheckReport {
  const ours = ourCheck(path);
  const theirs = qemuVerdict(path);
  const detail = `${what}: ours ${JSON.stringify({ errors: ours.errors, leaks: ours.leaks, end: ours.imageEndOffset })} ${ours.messages.slice(0, 12).join(" | ")}; qemu ${JSON.stringify(theirs)}`;
  assert.is(ours.errors, theirs.errors, detail);
  assert.is(ours.leaks, theirs.leaks, detail);
  return ours;
}

/** qemu-io on `path` without host flushes (the tests never crash the host), failing on any error. */
function io(path: string, commands: string[]): void {
  const result = runQemu("qemu-io", ["-t", "unsafe", ...commands.flatMap((c) => ["-c", c]), path]);
  if (result.status !== 0 || /error|failed/i.test(result.stdout + result.stderr)) {
    throw new Error(`qemu-io ${commands.join("; ")} on ${path} exited ${result.status}: ${result.stderr || result.stdout}`);
  }
}

/** Asserts qemu-img compare finds the guest contents of `a` and `b` identical. */
function assertSameContents(a: string, b: string, what: string): void {
  const result = runQemu("qemu-img", ["compare", "-f", "qcow2", "-F", "qcow2", a, b]);
  assert.is(result.status, 0, `${what}: qemu-img compare: ${result.stdout}${result.stderr}`);
}

/** A byte-exact copy of `path`. */
function clone(path: string, name: string): string {
  const target = fresh(name);
  copyFileSync(path, target);
  return target;
}

/** The parsed header of the image at `path`. */
function headerOf(path: string): Qcow2Header {
  const bytes = readFileSync(path);
  return parseHeader(bytes.subarray(0, Math.min(bytes.length, 2 << 20)), bytes.length, path);
}

function readU64(path: string, at: number): number {
  const buffer = new Uint8Array(8);
  const fd = openSync(path, "r");
  readSync(fd, buffer, 0, 8, at);
  closeSync(fd);
  return Number(new DataView(buffer.buffer).getBigUint64(0));
}

function writeBytes(path: string, at: number, data: Uint8Array): void {
  const fd = openSync(path, "r+");
  writeSync(fd, data, 0, data.length, at);
  closeSync(fd);
}

function writeU64(path: string, at: number, value: bigint): void {
  const buffer = new Uint8Array(8);
  new DataView(buffer.buffer).setBigUint64(0, value);
  writeBytes(path, at, buffer);
}

function writeU32(path: string, at: number, value: number): void {
  const buffer = new Uint8Array(4);
  new DataView(buffer.buffer).setUint32(0, value);
  writeBytes(path, at, buffer);
}

/** Where the refcount of host cluster `cluster` lives: the block's file offset and the entry index. */
function refcountSlot(path: string, cluster: number): { block: number; index: number; bits: number; clusterSize: number } {
  const header = headerOf(path);
  const geo = geometry(header);
  const { tableIndex, blockIndex } = refcountPosition(cluster, geo);
  const block = readU64(path, header.refcountTableOffset + tableIndex * 8);
  assert.ok(block !== 0, `cluster ${cluster} has a refcount block`);
  return { block, index: blockIndex, bits: geo.refcountBits, clusterSize: geo.clusterSize };
}

/** Sets the stored refcount of host cluster `cluster`; returns the old value. */
function setRefcount(path: string, cluster: number, value: number): number {
  const slot = refcountSlot(path, cluster);
  const block = new Uint8Array(slot.clusterSize);
  const fd = openSync(path, "r+");
  readSync(fd, block, 0, block.length, slot.block);
  const old = readRefcount(block, slot.index, slot.bits);
  writeRefcount(block, slot.index, slot.bits, value);
  writeSync(fd, block, 0, block.length, slot.block);
  closeSync(fd);
  return old;
}

/** The host offset of the L2 entry that maps guest byte `guest`. */
function l2EntryAt(path: string, guest: number): number {
  const header = headerOf(path);
  const geo = geometry(header);
  const cluster = Math.floor(guest / geo.clusterSize);
  const l1 = readU64(path, header.l1TableOffset + Math.floor(cluster / geo.l2Entries) * 8);
  const l2 = l1 % 2 ** 56 - (l1 % 512);
  assert.ok(l2 !== 0, `guest ${guest} has an L2 table`);
  return l2 + (cluster % geo.l2Entries) * 8;
}

/** The host offset qemu-img map gives for guest byte `guest`. */
function hostOffset(path: string, guest: number): number {
  const extent = qemuMap(path).find((e) => e.start <= guest && guest < e.start + e.length);
  assert.ok(extent?.offset !== undefined, `guest ${guest} is mapped`);
  return (extent.offset as number) + (guest - extent.start);
}

/**
 * Runs `fn` and asserts it finishes within `ms` milliseconds (a guard against hangs on hostile
 * images, with room for a loaded CI machine); returns its report, or the TandemError code it threw.
 */
function quickly(ms: number, fn: () => CheckReport): CheckReport | string {
  const start = performance.now();
  let outcome: CheckReport | string;
  try {
    outcome = fn();
  } catch (error) {
    if (!(error instanceof TandemError)) throw error;
    outcome = error.code;
  }
  const took = performance.now() - start;
  assert.ok(took < ms, `took ${took.toFixed(0)} ms (limit ${ms})`);
  return outcome;
}

/** A qcow2 image made by qemu with data, zero clusters, a discard and (unless told not to) an internal snapshot. */
function qemuImage(options: { compat: "0.10" | "1.1"; clusterSize: number; refcountBits?: number; snapshot?: boolean }): string {
  const path = fresh(`c${options.clusterSize}-v${options.compat}.qcow2`);
  const cs = options.clusterSize;
  const o = [`compat=${options.compat}`, `cluster_size=${cs}`];
  if (options.refcountBits !== undefined) o.push(`refcount_bits=${options.refcountBits}`);
  qemuImg("create", "-q", "-f", "qcow2", "-o", o.join(","), path, String(64 * cs));
  io(path, [
    `write -P 0x11 0 ${3 * cs + 100}`,
    `write -z ${cs} ${cs}`, // v3: a zero cluster that keeps its host cluster
    `write -P 0x22 ${8 * cs} ${2 * cs}`,
    `write -z ${16 * cs} ${2 * cs}`,
    `write -P 0x33 ${20 * cs} ${cs}`,
    `discard ${20 * cs} ${cs}`,
    `write -P 0x44 ${40 * cs} ${cs}`,
  ]);
  if (options.snapshot ?? true) {
    qemuImg("snapshot", "-c", "first", path);
    // The discard frees a cluster in the middle of the file: nothing is allocated after it.
    io(path, [`write -P 0x55 0 ${cs}`, `write -P 0x66 ${48 * cs} ${cs}`, `write -P 0x77 ${50 * cs} ${cs}`, `discard ${48 * cs} ${cs}`]);
  }
  return path;
}

/** A compressed qcow2 image (qemu-img convert -c) of compressible and random data. */
function compressedImage(compat: "0.10" | "1.1", clusterSize: number): string {
  const raw = fresh("source.raw");
  const random = seededRandom(clusterSize);
  const bytes = new Uint8Array(Math.min(24 * clusterSize, 3 << 20));
  for (let i = 0; i < bytes.length; i++) bytes[i] = i % 3 === 0 ? Math.floor(random() * 256) : (i >> 9) & 0xff;
  const fd = openSync(raw, "wx");
  writeSync(fd, bytes);
  closeSync(fd);
  truncateSync(raw, 8 << 20);
  const path = fresh(`compressed-c${clusterSize}-v${compat}.qcow2`);
  qemuImg("convert", "-t", "unsafe", "-c", "-O", "qcow2", "-o", `compat=${compat},cluster_size=${clusterSize}`, raw, path);
  return path;
}

test("fresh qemu images check clean, with qemu's image end offset (v2, v3; 512 B to 2 MiB clusters; snapshots, compressed, preallocated)", () => {
  if (!qemuTest("fresh qemu images")) return;
  for (const clusterSize of [512, 4096, 65536, 2 << 20]) {
    for (const compat of ["0.10", "1.1"] as const) {
      for (const path of [qemuImage({ compat, clusterSize }), compressedImage(compat, clusterSize)]) {
        const theirs = qemuVerdict(path);
        assert.is(theirs.status, 0, path);
        const ours = ourCheck(path);
        assert.is(ours.errors, 0, `${path}: ${ours.messages.join(" | ")}`);
        assert.is(ours.leaks, 0, path);
        assert.is(ours.imageEndOffset, theirs.end, `${path}: image end offset`);
        assert.ok(ours.messages.includes("No errors were found on the image."));
      }
    }
  }
  const preallocated = fresh("preallocated.qcow2");
  qemuImg("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096,preallocation=metadata", preallocated, "8M");
  const ours = ourCheck(preallocated);
  assert.is(ours.errors + ours.leaks, 0, ours.messages.join(" | "));
  assert.is(ours.imageEndOffset, qemuVerdict(preallocated).end);
});

/** A cluster inside the file whose stored refcount is 0 (freed by a discard). */
function freeCluster(path: string): number {
  const cluster = freeClusterOrNone(path);
  if (cluster === undefined) throw new Error(`${path} has no free cluster`);
  return cluster;
}

function freeClusterOrNone(path: string): number | undefined {
  const size = readFileSync(path).length;
  const { clusterSize } = refcountSlot(path, 0);
  for (let c = 1; c < Math.floor(size / clusterSize); c++) {
    const slot = refcountSlot(path, c);
    const block = new Uint8Array(clusterSize);
    const fd = openSync(path, "r");
    readSync(fd, block, 0, clusterSize, slot.block);
    closeSync(fd);
    if (readRefcount(block, slot.index, slot.bits) === 0) return c;
  }
  return undefined;
}

const COPIED = 1n << 63n;

/** Toggles the COPIED bit of the 8-byte entry at `at`. */
function flipCopied(path: string, at: number): void {
  writeU64(path, at, BigInt(readU64(path, at)) ^ COPIED);
}

/** A corruption of a fresh v3 image with a snapshot (64 KiB clusters), and whether repair can undo it. */
interface Corruption {
  name: string;
  apply(path: string, cs: number): void;
  /** Whether qemu-img check passes after our repair (else the errors remain, and are reported). */
  repairable: boolean;
}

const CORRUPTIONS: Corruption[] = [
  { name: "refcount of a COPIED data cluster 1 -> 0", repairable: true, apply: (p, cs) => assert.is(setRefcount(p, hostOffset(p, 0) / cs, 0), 1) },
  { name: "refcount of a shared data cluster 2 -> 1", repairable: true, apply: (p, cs) => assert.is(setRefcount(p, hostOffset(p, cs) / cs, 1), 2) },
  { name: "refcount of a COPIED data cluster 1 -> 2", repairable: true, apply: (p, cs) => assert.is(setRefcount(p, hostOffset(p, 0) / cs, 2), 1) },
  { name: "refcount of a free cluster 0 -> 1", repairable: true, apply: (p) => assert.is(setRefcount(p, freeCluster(p), 1), 0) },
  { name: "refcount of the L1 table 1 -> 0", repairable: true, apply: (p, cs) => assert.is(setRefcount(p, headerOf(p).l1TableOffset / cs, 0), 1) },
  { name: "refcount of the refcount table 1 -> 0", repairable: true, apply: (p, cs) => assert.is(setRefcount(p, headerOf(p).refcountTableOffset / cs, 0), 1) },
  { name: "COPIED cleared on an L2 entry", repairable: true, apply: (p) => flipCopied(p, l2EntryAt(p, 0)) },
  { name: "COPIED set on a shared L2 entry", repairable: true, apply: (p, cs) => flipCopied(p, l2EntryAt(p, cs)) },
  { name: "COPIED cleared on an L1 entry", repairable: true, apply: (p) => flipCopied(p, headerOf(p).l1TableOffset) },
  {
    name: "an L2 entry pointing past the end of the file",
    repairable: false,
    apply: (p, cs) => {
      const beyond = Math.ceil(readFileSync(p).length / cs + 10) * cs;
      writeU64(p, l2EntryAt(p, 40 * cs), COPIED | BigInt(beyond));
    },
  },
  {
    name: "a refcount table entry pointing past the end of the file",
    repairable: true,
    apply: (p, cs) => writeU64(p, headerOf(p).refcountTableOffset, BigInt(Math.ceil(readFileSync(p).length / cs + 100) * cs)),
  },
  {
    // The refcounts can be made to agree (qemu-img checks no overlap of data with metadata).
    name: "an L2 entry pointing at the L1 table",
    repairable: true,
    apply: (p, cs) => writeU64(p, l2EntryAt(p, 40 * cs), COPIED | BigInt(headerOf(p).l1TableOffset)),
  },
];

let base: string | undefined;
/** The image every corruption starts from, made once: v3, 64 KiB clusters, a snapshot. */
function corruptionBase(): string {
  base ??= qemuImage({ compat: "1.1", clusterSize: 65536 });
  return base;
}

for (const corruption of CORRUPTIONS) {
  test(`corrupt: ${corruption.name}: our errors and leaks equal qemu-img's; repair ${corruption.repairable ? "fixes it" : "keeps the data and says what is left"}`, () => {
    if (!qemuTest(corruption.name)) return;
    const cs = 65536;
    const path = clone(corruptionBase(), "corrupt.qcow2");
    corruption.apply(path, cs);
    const found = agreeWithQemu(path, corruption.name);
    assert.ok(found.errors + found.leaks > 0, `${corruption.name} is found`);

    const before = clone(path, "before-repair.qcow2");
    const repaired = ourCheck(path, true);
    const after = qemuVerdict(path);
    if (corruption.repairable) {
      assert.is(after.status, 0, `qemu-img check after our repair: ${JSON.stringify(after)}; ${repaired.messages.join(" | ")}`);
      assert.is(repaired.errors, 0);
      assert.is(repaired.leaks, 0);
      assert.is(repaired.errorsFixed, found.errors);
      assert.is(repaired.leaksFixed, found.leaks);
      assertSameContents(before, path, "the guest data is what it was before the repair");
      assert.is(repaired.imageEndOffset, after.end);
    } else {
      assert.ok(repaired.errors > 0, "what cannot be repaired is still reported");
      assert.is(repaired.errors, after.errors, `remaining errors: ${repaired.messages.join(" | ")}; qemu ${JSON.stringify(after)}`);
      assert.is(repaired.leaks, after.leaks);
    }
  });
}

test("a lazy-refcounts image killed while dirty: errors found as qemu finds them; repair makes it clean with the data intact", () => {
  if (!qemuTest("lazy refcounts")) return;
  const path = fresh("lazy.qcow2");
  qemuImg("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", path, "64M");
  // qemu-iotests 039: write, then die without flushing the refcounts.
  const killed = runQemu("qemu-io", ["-c", "write -P 0x5a 0 64k", "-c", "sigraise 9", path]);
  assert.ok(killed.status !== 0, "qemu-io was killed");
  assert.is(headerOf(path).incompatibleFeatures & 1n, 1n, "the dirty bit is set");
  const found = agreeWithQemu(path, "dirty lazy image");
  assert.ok(found.errors > 0);
  assert.ok(found.messages.includes("ERROR cluster 5 refcount=0 reference=1"), found.messages.join(" | "));

  const repaired = ourCheck(path, true);
  assert.is(repaired.errors, 0, repaired.messages.join(" | "));
  assert.is(repaired.errorsFixed, found.errors);
  assert.is(qemuVerdict(path).status, 0);
  assert.is(headerOf(path).incompatibleFeatures & 3n, 0n, "the dirty and corrupt bits are clear");
  io(path, ["read -P 0x5a 0 64k", "read -P 0 64k 1M"]);
});

test("the corrupt bit is cleared by a repair; a clean image is left byte for byte as it was", () => {
  if (!qemuTest("corrupt bit")) return;
  const path = clone(corruptionBase(), "clean.qcow2");
  const bytes = readFileSync(path);
  const clean = ourCheck(path, true);
  assert.is(clean.errors + clean.leaks + clean.errorsFixed + clean.leaksFixed, 0);
  assert.equal(readFileSync(path), bytes, "nothing written");
  writeU64(path, 72, 2n);
  const repaired = ourCheck(path, true);
  assert.is(repaired.errors, 0);
  assert.is(headerOf(path).incompatibleFeatures, 0n);
  assert.is(qemuVerdict(path).status, 0);
});

test("repair of a read-only file is refused before anything is read", () => {
  const path = fresh("readonly.qcow2");
  const fd = openSync(path, "wx");
  closeSync(fd);
  const file = FileBlockFile.open(path, { readOnly: true });
  try {
    assert.is(errorCode(() => checkQcow2(file, { repair: true })), ErrorCode.DiskReadOnly);
    assert.is(errorCode(() => checkQcow2(file, { repair: false })), ErrorCode.DiskFormat, "an empty file is no qcow2 image");
  } finally {
    file.close();
  }
});

test("every refcount width (1, 8, 16, 64 bits) and v2: errors and leaks found as qemu finds them, and repaired", () => {
  if (!qemuTest("refcount widths")) return;
  const cases: { compat: "0.10" | "1.1"; refcountBits?: number; clusterSize: number }[] = [
    { compat: "1.1", refcountBits: 1, clusterSize: 4096 },
    { compat: "1.1", refcountBits: 8, clusterSize: 512 },
    { compat: "1.1", refcountBits: 64, clusterSize: 65536 },
    { compat: "0.10", clusterSize: 4096 },
  ];
  for (const c of cases) {
    const what = `compat ${c.compat}, ${c.refcountBits ?? 16}-bit refcounts, ${c.clusterSize}-byte clusters`;
    const path = qemuImage({ ...c, snapshot: c.refcountBits !== 1 });
    const data = clone(path, "intact.qcow2");
    const free = c.refcountBits === 1 ? undefined : freeClusterOrNone(path);
    assert.is(setRefcount(path, hostOffset(path, 0) / c.clusterSize, 0), 1);
    if (free !== undefined) setRefcount(path, free, 1);
    const found = agreeWithQemu(path, what);
    assert.ok(found.errors > 0, what);
    if (free !== undefined) assert.ok(found.leaks > 0, what);
    const repaired = ourCheck(path, true);
    assert.is(repaired.errors + repaired.leaks, 0, `${what}: ${repaired.messages.join(" | ")}`);
    const after = qemuVerdict(path);
    assert.is(after.status, 0, `${what}: qemu after our repair ${JSON.stringify(after)}`);
    assert.is(repaired.imageEndOffset, after.end, what);
    assert.is(headerOf(path).version, c.compat === "0.10" ? 2 : 3, `${what}: the version is kept`);
    assertSameContents(data, path, `${what}: the data is intact`);
  }
});

test("rebuild across many refcount blocks and a refcount table of several clusters (512-byte clusters, 64-bit refcounts)", () => {
  if (!qemuTest("many refcount blocks")) return;
  const path = fresh("many-blocks.qcow2");
  qemuImg("create", "-q", "-f", "qcow2", "-o", "cluster_size=512,refcount_bits=64", path, "16M");
  io(path, ["write -P 0x3c 0 3M", "write -P 0x3d 8M 512k"]);
  const data = clone(path, "intact.qcow2");
  const header = headerOf(path);
  assert.ok(header.refcountTableClusters >= 2, `the table spans ${header.refcountTableClusters} clusters`);
  for (const guest of [0, 1 << 20, 2 << 20, 8 << 20]) setRefcount(path, hostOffset(path, guest) / 512, 0);
  const found = agreeWithQemu(path, "many blocks");
  assert.is(found.errors, 8, "a refcount error and a COPIED error for each of four clusters");
  const repaired = ourCheck(path, true);
  assert.is(repaired.errors + repaired.leaks, 0, repaired.messages.join(" | "));
  assert.is(qemuVerdict(path).status, 0);
  assert.ok(headerOf(path).refcountTableClusters >= 2);
  assertSameContents(data, path, "many blocks");
});

test("compressed clusters sharing host clusters: a refcount lowered under them is found as qemu finds it, and repaired (v2 and v3)", () => {
  if (!qemuTest("compressed repair")) return;
  for (const compat of ["0.10", "1.1"] as const) {
    const path = compressedImage(compat, 4096);
    const intact = clone(path, "intact.qcow2");
    const entry = BigInt(readU64(path, l2EntryAt(path, 0)));
    assert.ok((entry & (1n << 62n)) !== 0n, "guest cluster 0 is compressed");
    const offset = Number(entry & ((1n << 58n) - 1n)); // 4 KiB clusters: offset bits 0..57
    const before = setRefcount(path, Math.floor(offset / 4096), 0);
    assert.ok(before >= 1);
    const found = agreeWithQemu(path, `compressed ${compat}`);
    assert.ok(found.errors >= 1);
    const repaired = ourCheck(path, true);
    assert.is(repaired.errors + repaired.leaks, 0, repaired.messages.join(" | "));
    const after = qemuVerdict(path);
    assert.is(after.status, 0, JSON.stringify(after));
    assert.is(repaired.imageEndOffset, after.end);
    assertSameContents(intact, path, `compressed ${compat}`);
  }
});

test("hostile: an L1 table far too large for the file: coded errors, at once; a refcount table past the end is checked as qemu-img does", () => {
  if (!qemuTest("hostile headers")) return;
  const huge = clone(corruptionBase(), "huge-l1.qcow2");
  writeU32(huge, 36, 0x7fffffff);
  assert.is(quickly(10_000, () => ourCheck(huge)), ErrorCode.DiskFormat);
  const table = clone(corruptionBase(), "reftable-past-end.qcow2");
  writeU64(table, 48, BigInt(Math.ceil(readFileSync(table).length / 65536 + 16) * 65536));
  // A refcount table past the end (a truncated image) is checked as QEMU checks it: every refcount reads as 0.
  assert.ok(agreeWithQemu(table, "refcount table past the end").errors > 0);
  const snapshots = clone(corruptionBase(), "many-snapshots.qcow2");
  writeU32(snapshots, 60, 0xffffffff);
  assert.is(quickly(10_000, () => ourCheck(snapshots)), ErrorCode.DiskFormat);
});

test("hostile: a million L1 entries all pointing at one L2 table: overflow errors, quickly, and a repair that finishes", () => {
  if (!qemuTest("one L2 table for a million entries")) return;
  const path = clone(corruptionBase(), "one-l2.qcow2");
  const header = headerOf(path);
  const l2 = BigInt(readU64(path, header.l1TableOffset));
  const entries = 1 << 20;
  const l1 = new Uint8Array(entries * 8);
  const view = new DataView(l1.buffer);
  for (let i = 0; i < entries; i++) view.setBigUint64(i * 8, l2);
  const at = Math.ceil(readFileSync(path).length / 65536) * 65536;
  writeBytes(path, at, l1);
  writeU32(path, 36, entries);
  writeU64(path, 40, BigInt(at));
  const found = quickly(20_000, () => ourCheck(path));
  assert.ok(typeof found !== "string" && found.errors > entries - 65536, "every reference past 65535 is an overflow error");
  const repaired = quickly(30_000, () => ourCheck(path, true));
  assert.ok(typeof repaired !== "string" && repaired.errors > 0, "overflow cannot be repaired");
});

test("hostile: loops (an L1 entry pointing at the L1 table, an L2 entry at its own table) are counted like qemu-img, quickly", () => {
  if (!qemuTest("loops")) return;
  const path = clone(corruptionBase(), "loops.qcow2");
  const header = headerOf(path);
  writeU64(path, header.l1TableOffset + 8, COPIED | BigInt(header.l1TableOffset));
  const entry = l2EntryAt(path, 40 * 65536);
  writeU64(path, entry, COPIED | BigInt(entry - (entry % 65536)));
  assert.ok(typeof quickly(10_000, () => agreeWithQemu(path, "loops")) !== "string");
});

test("hostile: 1-bit refcounts with a cluster referenced twice: an overflow error, never a wrap, as qemu-img counts it", () => {
  if (!qemuTest("refcount overflow")) return;
  const path = qemuImage({ compat: "1.1", clusterSize: 4096, refcountBits: 1, snapshot: false });
  writeU64(path, l2EntryAt(path, 4096), COPIED | BigInt(hostOffset(path, 0)));
  const found = agreeWithQemu(path, "1-bit overflow");
  assert.is(found.errors, 1, found.messages.join(" | "));
  assert.ok(found.messages.some((m) => m.includes("refcount overflow")));
  const repaired = ourCheck(path, true);
  assert.is(repaired.errors, 1, "the overflow stays an error");
  assert.is(repaired.leaks, 0, "the cluster nothing references any more is freed");
  const after = qemuVerdict(path);
  assert.is(after.errors, 1);
  assert.is(after.leaks, 0);
});

test("hostile: 2000 snapshots sharing the active L1 table: counted per path, as qemu-img counts them", () => {
  if (!qemuTest("shared snapshot tables")) return;
  const path = qemuImage({ compat: "1.1", clusterSize: 4096, snapshot: false });
  const header = headerOf(path);
  const entryBytes = 40 + 16 + 8; // fixed part, 16 bytes of extra data, id "1" and name "s" padded to 8
  const count = 2000;
  const table = new Uint8Array(count * entryBytes);
  const view = new DataView(table.buffer);
  for (let i = 0; i < count; i++) {
    const at = i * entryBytes;
    view.setBigUint64(at, BigInt(header.l1TableOffset));
    view.setUint32(at + 8, header.l1Size);
    view.setUint16(at + 12, 1);
    view.setUint16(at + 14, 1);
    view.setUint32(at + 36, 16);
    view.setBigUint64(at + 48, BigInt(header.size));
    table[at + 56] = 0x31;
    table[at + 57] = 0x73;
  }
  const at = Math.ceil(readFileSync(path).length / 4096) * 4096;
  writeBytes(path, at, table);
  writeU32(path, 60, count);
  writeU64(path, 64, BigInt(at));
  const found = quickly(20_000, () => agreeWithQemu(path, "shared snapshot L1"));
  assert.ok(typeof found !== "string" && found.errors > 0);
  const repaired = ourCheck(path, true);
  assert.is(repaired.errors + repaired.leaks, 0, repaired.messages.slice(-6).join(" | "));
  assert.is(qemuVerdict(path).status, 0);
});

/** A growable in-memory image, so that fuzzing does not touch the disk. */
class MemoryFile implements BlockFile {
  readonly path = "fuzzed.qcow2";
  readonly readOnly: boolean;
  bytes: Uint8Array;
  length: number;
  constructor(bytes: Uint8Array, readOnly: boolean) {
    this.bytes = Uint8Array.from(bytes);
    this.length = bytes.length;
    this.readOnly = readOnly;
  }
  size(): number {
    return this.length;
  }
  read(offset: number, target: Uint8Array): number {
    const n = Math.max(0, Math.min(target.length, this.length - offset));
    target.set(this.bytes.subarray(offset, offset + n));
    return n;
  }
  write(offset: number, data: Uint8Array): void {
    assert.ok(!this.readOnly, "no write to a read-only file");
    const end = offset + data.length;
    if (end > this.bytes.length) {
      const grown = new Uint8Array(Math.max(end, this.bytes.length * 2));
      grown.set(this.bytes);
      this.bytes = grown;
    }
    this.bytes.set(data, offset);
    this.length = Math.max(this.length, end);
  }
  sync(): void {}
  truncate(length: number): void {
    this.length = length;
  }
  close(): void {}
  contents(): Uint8Array {
    return this.bytes.slice(0, this.length);
  }
}

/** Our check of in-memory image bytes: the report, or the code of the TandemError it threw. */
function checkBytes(bytes: Uint8Array, repair: boolean): { report?: CheckReport; code?: string; repaired: Uint8Array } {
  const file = new MemoryFile(bytes, !repair);
  try {
    return { report: checkQcow2(file, { repair }), repaired: file.contents() };
  } catch (error) {
    if (!(error instanceof TandemError)) throw error;
    return { code: error.code, repaired: file.contents() };
  }
}

/** Byte ranges holding the image's metadata: header, L1, refcount table and blocks, L2 tables, snapshot table. */
function metadataRanges(bytes: Uint8Array): [number, number][] {
  const header = parseHeader(bytes.subarray(0, 2 << 20), bytes.length, "image");
  const cs = geometry(header).clusterSize;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const ranges: [number, number][] = [[0, cs], [header.l1TableOffset, header.l1Size * 8], [header.refcountTableOffset, header.refcountTableClusters * cs]];
  if (header.nbSnapshots > 0) ranges.push([header.snapshotsOffset, 64 * header.nbSnapshots]);
  for (let i = 0; i < header.refcountTableClusters * cs; i += 8) {
    const block = Number(view.getBigUint64(header.refcountTableOffset + i));
    if (block !== 0) ranges.push([block, cs]);
  }
  for (let i = 0; i < header.l1Size; i++) {
    const l2 = Number(view.getBigUint64(header.l1TableOffset + i * 8) & 0x00fffffffffffe00n);
    if (l2 !== 0) ranges.push([l2, cs]);
  }
  return ranges;
}

/** A copy of `bytes` with 1 to 3 random bits flipped inside `ranges`. */
function flipBits(bytes: Uint8Array, ranges: [number, number][], random: () => number): Uint8Array {
  const out = Uint8Array.from(bytes);
  const flips = 1 + Math.floor(random() * 3);
  for (let k = 0; k < flips; k++) {
    const [start, length] = ranges[Math.floor(random() * ranges.length)];
    out[start + Math.floor(random() * length)] ^= 1 << Math.floor(random() * 8);
  }
  return out;
}

test("a zero flag in a version 2 image is an error (qemu-img only refuses it when reading)", () => {
  if (!qemuTest("v2 zero flag")) return;
  const path = qemuImage({ compat: "0.10", clusterSize: 4096, snapshot: false });
  const entry = l2EntryAt(path, 0);
  writeU64(path, entry, BigInt(readU64(path, entry)) | 1n);
  const found = ourCheck(path);
  assert.is(found.errors, 1);
  assert.ok(found.messages[0].includes("zero flag in a version 2 image"), found.messages[0]);
  assert.is(ourCheck(path, true).errors, 1, "repair does not guess what the entry meant");
});

test("an image with persistent bitmaps is refused as unsupported rather than miscounted", () => {
  if (!qemuTest("bitmaps")) return;
  const path = qemuImage({ compat: "1.1", clusterSize: 65536, snapshot: false });
  qemuImg("bitmap", "--add", path, "dirty0");
  assert.is(errorCode(() => ourCheck(path)), ErrorCode.DiskUnsupported);
});

/** A {@link MemoryFile} that logs every write, to replay any prefix of them as a crash would leave the file. */
class RecordingFile extends MemoryFile {
  readonly writes: { offset: number; data: Uint8Array }[] = [];
  override write(offset: number, data: Uint8Array): void {
    this.writes.push({ offset, data: data.slice() });
    super.write(offset, data);
  }
}

for (const [name, corrupt] of [
  ["a leaked cluster", (p: string) => setRefcount(p, freeCluster(p), 1)],
  ["a data cluster with refcount 0", (p: string) => setRefcount(p, hostOffset(p, 0) / 65536, 0)],
] as const) {
  test(`crash during repair of ${name}: after any prefix of its writes no refcount is lower than before, and qemu-img agrees`, () => {
    if (!qemuTest("crash during repair")) return;
    const path = clone(corruptionBase(), "crash.qcow2");
    corrupt(path);
    const original = new Uint8Array(readFileSync(path));
    const refcountErrors = (report: CheckReport | undefined) => report?.messages.filter((m) => m.startsWith("ERROR cluster")).length;
    const before = refcountErrors(checkBytes(original, false).report);
    const recording = new RecordingFile(original, false);
    assert.is(checkQcow2(recording, { repair: true }).errors, 0);
    assert.ok(recording.writes.length >= 2, "the repair wrote something");
    for (let k = 0; k <= recording.writes.length; k++) {
      const state = new MemoryFile(original, false);
      for (const { offset, data } of recording.writes.slice(0, k)) state.write(offset, data);
      const report = checkBytes(state.contents(), false).report;
      assert.ok(report !== undefined, `after ${k} writes the image can be checked`);
      assert.ok((refcountErrors(report) ?? 0) <= (before ?? 0), `after ${k} writes: ${report.messages.join(" | ")}`);
      const crashed = fresh(`crashed-${k}.qcow2`);
      writeFileSync(crashed, state.contents());
      const theirs = qemuVerdict(crashed);
      assert.ok(theirs.errors <= (before ?? 0) * 2, `after ${k} writes qemu-img finds ${theirs.errors} errors`);
      if (before === 0) assert.ok(theirs.status === 0 || theirs.status === 3, `after ${k} writes qemu-img check exits ${theirs.status}`);
    }
  });
}

const FUZZ_ROUNDS = Number(process.env.TANDEM_QCOW2_FUZZ ?? 150);

test(`fuzz: ${FUZZ_ROUNDS} images with metadata bits flipped: check and repair finish quickly, and a repair that says clean is clean`, () => {
  if (!qemuTest("fuzz")) return;
  const random = seededRandom(0xc0ffee);
  const bases = [qemuImage({ compat: "1.1", clusterSize: 512 }), qemuImage({ compat: "0.10", clusterSize: 4096 }), compressedImage("1.1", 4096)].map((p) => new Uint8Array(readFileSync(p)));
  let reports = 0;
  for (let round = 0; round < FUZZ_ROUNDS; round++) {
    const base = bases[round % bases.length];
    const bytes = flipBits(base, metadataRanges(base), random);
    const start = performance.now();
    const checked = checkBytes(bytes, false);
    if (checked.report === undefined) {
      assert.ok([ErrorCode.DiskFormat, ErrorCode.DiskUnsupported].includes(checked.code as never), `round ${round}: ${checked.code}`);
      continue;
    }
    reports++;
    const repaired = checkBytes(bytes, true);
    assert.ok(performance.now() - start < 20_000, `round ${round} took too long`);
    if (repaired.report === undefined || repaired.report.errors + repaired.report.leaks > 0) continue;
    const again = checkBytes(repaired.repaired, false).report;
    assert.is(again?.errors, 0, `round ${round}: ${again?.messages.join(" | ")}`);
    assert.is(again?.leaks, 0, `round ${round}`);
  }
  assert.ok(reports > FUZZ_ROUNDS / 2, `most fuzzed images can be checked (${reports} of ${FUZZ_ROUNDS})`);
});

test("fuzz against qemu-img: bits flipped in refcount blocks and L2 tables are counted as qemu-img counts them; a clean repair passes qemu-img", () => {
  if (!qemuTest("fuzz against qemu-img")) return;
  const random = seededRandom(0xfeed);
  const base = new Uint8Array(readFileSync(qemuImage({ compat: "1.1", clusterSize: 512 })));
  const header = parseHeader(base.subarray(0, 512), base.length, "base");
  const ranges = metadataRanges(base).filter(([start]) => start >= 512 && start !== header.l1TableOffset && start !== header.refcountTableOffset && start !== header.snapshotsOffset);
  for (let round = 0; round < 30; round++) {
    const path = fresh(`fuzz-${round}.qcow2`);
    const fd = openSync(path, "wx");
    writeSync(fd, flipBits(base, ranges, random));
    closeSync(fd);
    agreeWithQemu(path, `round ${round}`);
    const repaired = ourCheck(path, true);
    if (repaired.errors + repaired.leaks === 0) assert.is(qemuVerdict(path).status, 0, `round ${round}: ${repaired.messages.join(" | ")}`);
  }
});

test.run();
