import { copyFileSync, readFileSync } from "node:fs";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { runCli } from "../../../host/cli/commands.ts";
import { qemuCheck, qemuImg, qemuIo, qemuTest, runQemu, tempDir } from "../../support/qemu.ts";
import { COPIED, layoutOf, patchU64, truncateTo } from "./image-layout.ts";

/**
 * The damaged-image findings of issue 22, each made as it was reported and judged by qemu-img:
 * what tandem's `img check -r all` leaves must be no worse than what `qemu-img check -r all`
 * leaves, and the guest data must be what it was. (The corpus, corruption-corpus.test.ts, covers
 * every kind on every base; these are the reported recipes, through the CLI.)
 */
const test = suite("qcow2 issue 22 findings, as reported, through tandem img: repair is no worse than qemu-img's, data kept");
const dir = tempDir("qcow2-findings");
test.after(() => dir.remove());

let serial = 0;

/** Runs `tandem img ...` in this process; its exit code and output. */
async function img(...args: string[]): Promise<{ code: number; out: string }> {
  const lines: string[] = [];
  const code = await runCli(["img", ...args], { out: (l) => lines.push(l), err: (l) => lines.push(l) });
  return { code, out: lines.join("\n") };
}

/** qemu-img check's corruption count (Infinity if it could not check the image at all). */
function qemuErrors(path: string): number {
  const { status, report } = qemuCheck(path);
  const corruptions = report.corruptions as number | undefined;
  return corruptions ?? (status === 0 || status === 3 ? 0 : Infinity);
}

/** A qcow2 image of `size` with `cluster_size=cs` whose first `written` bytes qemu-io filled with 0x5a. */
function written(cs: number, size: string, written: string): string {
  const path = dir.path(`${serial++}.qcow2`);
  qemuImg("create", "-q", "-f", "qcow2", "-o", `cluster_size=${cs}`, path, size);
  qemuIo(path, [`write -P 0x5a 0 ${written}`]);
  return path;
}

/** Reads through qemu-io (read-only), each command's pattern checked; fails on any error. */
function assertReads(path: string, ...commands: string[]): void {
  const read = runQemu("qemu-io", ["-r", ...commands.flatMap((c) => ["-c", c]), path]);
  const output = read.stdout + read.stderr;
  assert.is(read.status, 0, output);
  assert.not.match(output, /verification failed|error/i, output);
}

/** Repairs `path` with tandem and a copy with qemu-img; returns qemu-img check's errors after each. */
async function repairBoth(path: string): Promise<{ ours: number; theirs: number; output: string }> {
  const theirs = `${path}.qemu.qcow2`;
  copyFileSync(path, theirs);
  runQemu("qemu-img", ["check", "-r", "all", theirs]);
  const repaired = await img("check", "-r", "all", path);
  return { ours: qemuErrors(path), theirs: qemuErrors(theirs), output: repaired.out };
}

test("1: one L2 entry pointed at EOF + 10 clusters (512-byte clusters, 8M written): no new damage, offset 0 does not read a refcount block", async () => {
  if (!qemuTest("issue 22 finding 1")) return;
  const path = written(512, "16M", "8M");
  const layout = layoutOf(path);
  const entry = layout.l2.find((e) => e.guest === 0);
  assert.ok(entry !== undefined, "guest cluster 0 is mapped");
  const eof = Math.ceil(layout.fileSize / 512) * 512;
  patchU64(path, entry.at, COPIED | BigInt(eof + 10 * 512));
  const { ours, theirs, output } = await repairBoth(path);
  assert.ok(ours <= theirs, `qemu-img check: ${ours} errors after tandem's repair, ${theirs} after its own; ${output}`);
  const check = runQemu("qemu-img", ["check", path]);
  assert.not.match(check.stdout + check.stderr, /has \d+ references/, "no refcount block referenced twice");
  // The cluster past the end read as zeros before the repair; it still does, and the rest is intact.
  assertReads(path, "read -P 0 0 512", "read -P 0x5a 512 8387584");
});

test("3: a misaligned L1 entry: repair frees nothing the tables reference; no more errors than qemu-img's repair", async () => {
  if (!qemuTest("issue 22 finding 3")) return;
  const path = written(512, "16M", "8M");
  const layout = layoutOf(path);
  const entry = layout.l1[0];
  patchU64(path, entry.at, entry.value + 8n);
  const { ours, theirs, output } = await repairBoth(path);
  assert.ok(ours <= theirs, `qemu-img check: ${ours} errors after tandem's repair, ${theirs} after its own; ${output}`);
  // What the other L1 entries map is untouched: the guest reads it back through qemu-io.
  const second = layout.l1[1];
  assert.ok(second !== undefined, "a second L2 table");
  const perTable = (512 / 8) * 512;
  assertReads(path, `read -P 0x5a ${perTable} ${8 * 1024 * 1024 - perTable}`);
});

test("4: a refcount table lost to truncation (data cut off with it): check reports it, repair rebuilds the refcounts, convert then reads what qemu-img reads", async () => {
  if (!qemuTest("issue 22 finding 4")) return;
  // 512-byte clusters and 8M of data: the refcount table outgrows its cluster and moves near the end of the file.
  const path = written(512, "16M", "8M");
  const layout = layoutOf(path);
  const cut = layout.refcountTableOffset + 512;
  assert.ok(cut < layout.fileSize, "the cut goes through the refcount table");
  truncateTo(path, cut);
  const expected = dir.path(`${serial++}.raw`);
  qemuImg("convert", "-O", "raw", path, expected);

  const checked = await img("check", path);
  assert.is(checked.code, 2, `check finds errors (exit 2), not a failure to check: ${checked.out}`);
  // Data clusters past the new end: tandem refuses to read them (QEMU reads zeros), with a coded error.
  const refused = await img("convert", "-O", "raw", path, dir.path(`${serial++}.raw`));
  assert.is(refused.code, 1, refused.out);
  assert.match(refused.out, /E_DISK_FORMAT: .*past the end of the file/);

  const { ours, theirs, output } = await repairBoth(path);
  assert.ok(ours <= theirs, `qemu-img check: ${ours} errors after tandem's repair, ${theirs} after its own; ${output}`);
  assert.is(ours, 0, output);
  // The rebuilt structure carried the end of the file over the cut-off clusters: they exist and read as zeros, as in QEMU.
  const raw = dir.path(`${serial++}.raw`);
  const converted = await img("convert", "-O", "raw", path, raw);
  assert.is(converted.code, 0, converted.out);
  assert.ok(Buffer.compare(readFileSync(raw), readFileSync(expected)) === 0, "tandem's conversion of the repaired image equals qemu-img's of the damaged one");
});

test.run();
