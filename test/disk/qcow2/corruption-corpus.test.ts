import { spawnSync } from "node:child_process";
import { copyFileSync, rmSync } from "node:fs";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { FileBlockFile } from "../../../host/disk/block-file.ts";
import { checkQcow2 } from "../../../host/disk/qcow2/check.ts";
import { openDisk } from "../../../host/disk/registry.ts";
import { ErrorCode, TandemError } from "../../../host/errors.ts";
import { qemuTest, tempDir } from "../../support/qemu.ts";
import { BASES, baseName, corpus, damage, makeBase } from "./corruption-corpus.ts";
import { CORRUPT_BIT, incompatibleFeatures } from "./image-layout.ts";

/**
 * TANDEM_LONG_TESTS=1 runs every kind on every base with three seeds each (about 800 cases);
 * the default runs every kind on six bases once (about 140), in a minute or so.
 */
const LONG = process.env.TANDEM_LONG_TESTS === "1";
const SEED = 0x22c0_ffee;

const test = suite("qcow2 corruption corpus: after tandem's repair qemu-img check finds no more errors than after its own; writes onto metadata are refused");
const dir = tempDir("qcow2-corpus");
test.after(() => dir.remove());

/** Runs qemu-img; its error lines can run to megabytes on these images, so only stdout is kept. */
function qemuImgQuiet(args: string[]): { status: number; stdout: string } {
  const result = spawnSync("qemu-img", args, { encoding: "utf8", timeout: 120_000, maxBuffer: 64 << 20, stdio: ["ignore", "pipe", "ignore"] });
  if (result.error) throw new Error(`qemu-img ${args.join(" ")}: ${result.error.message}`);
  return { status: result.status ?? -1, stdout: result.stdout };
}

/** qemu-img check's corruption count, or Infinity if it could not check the image at all. */
function qemuErrors(path: string): number {
  const { status, stdout } = qemuImgQuiet(["check", "--output=json", path]);
  try {
    const corruptions = (JSON.parse(stdout) as { corruptions?: number }).corruptions;
    if (corruptions !== undefined) return corruptions;
  } catch {
    // no report: qemu-img could not open or check the image
  }
  return status === 0 || status === 3 ? 0 : Infinity;
}

/** The TandemError `fn` throws (undefined if it returns); anything else is a crash and fails the test. */
function coded(fn: () => void, what: string): TandemError | undefined {
  try {
    fn();
  } catch (error) {
    if (error instanceof TandemError) return error;
    throw new Error(`${what}: not a coded error: ${error instanceof Error ? error.stack : String(error)}`);
  }
  return undefined;
}

test("the corpus", () => {
  if (!qemuTest("corruption corpus")) return;
  const bases = new Map<string, string>();
  for (const base of BASES) {
    const path = dir.path(`${baseName(base)}.qcow2`);
    makeBase(path, base);
    bases.set(baseName(base), path);
  }
  const cases = corpus(SEED, LONG ? BASES.length : 6, LONG ? 3 : 1);
  let applied = 0;
  let repairedAsWell = 0;
  let overlapRefused = 0;
  const notApplicable: string[] = [];
  const exceptions: string[] = [];
  const failures: string[] = [];
  for (const c of cases) {
    const name = `${c.kind} on ${baseName(c.base)} (seed ${c.seed})`;
    const damaged = dir.path("damaged.qcow2");
    copyFileSync(bases.get(baseName(c.base)) as string, damaged);
    const done = damage(damaged, c);
    if (done === null) {
      notApplicable.push(name);
      continue;
    }
    applied++;
    const what = `${name}: ${done.what}`;
    if (process.env.TANDEM_CORPUS_TRACE === "1") console.log(`  case ${what}`);
    const ours = dir.path("ours.qcow2");
    const theirs = dir.path("theirs.qcow2");
    copyFileSync(damaged, ours);
    copyFileSync(damaged, theirs);
    const errorsBefore = qemuErrors(damaged);

    // qemu-img's repair on one copy, tandem's on the other; qemu-img check judges both.
    qemuImgQuiet(["check", "-r", "all", theirs]);
    const qemuAfter = qemuErrors(theirs);
    const file = FileBlockFile.open(ours);
    const refused = coded(() => checkQcow2(file, { repair: true }), `${what}: repair`);
    file.close();
    const tandemAfter = qemuErrors(ours);
    if (refused !== undefined) exceptions.push(`${what}: tandem's repair refused (${refused.code}: ${refused.message.slice(0, 160)}); qemu-img check then: ${tandemAfter} errors, after qemu's repair ${qemuAfter}`);
    if (tandemAfter <= qemuAfter) repairedAsWell++;
    else failures.push(`${what}: ${tandemAfter} errors after tandem's repair, ${qemuAfter} after qemu-img's (${errorsBefore} before)`);

    // Writes into the damaged image: only coded errors; a write onto metadata is refused and marks the image corrupt.
    const written = dir.path("written.qcow2");
    copyFileSync(damaged, written);
    let overlap: TandemError | undefined;
    const opened = coded(() => {
      const disk = openDisk(written);
      try {
        if (done.overlapWrite !== undefined) overlap = coded(() => disk.write(done.overlapWrite as number, new Uint8Array(512).fill(0x99)), `${what}: overlap write`);
        for (let i = 0; i < 8; i++) {
          const at = Math.floor((disk.size / 8) * i / 512) * 512;
          coded(() => disk.write(at, new Uint8Array(512).fill(i)), `${what}: write at ${at}`);
        }
        coded(() => disk.flush(), `${what}: flush`);
      } finally {
        coded(() => disk.close(), `${what}: close`);
      }
    }, `${what}: open`);
    if (done.overlapWrite !== undefined) {
      if (opened !== undefined) failures.push(`${what}: the image did not open for the overlap write (${opened.code}: ${opened.message})`);
      else if (overlap === undefined || overlap.code !== ErrorCode.DiskCorrupt) failures.push(`${what}: a write onto metadata gave ${overlap === undefined ? "no error" : `${overlap.code}: ${overlap.message}`}`);
      else if (c.base.version === 3 && (incompatibleFeatures(written) & CORRUPT_BIT) === 0n) failures.push(`${what}: the corrupt bit is not set`);
      else {
        overlapRefused++;
        const errorsAfterWrite = qemuErrors(written);
        if (errorsAfterWrite > errorsBefore) failures.push(`${what}: qemu-img check finds ${errorsAfterWrite} errors after the refused write, ${errorsBefore} before`);
      }
    }
    for (const path of [damaged, ours, theirs, written]) rmSync(path, { force: true });
  }
  const overlapCases = cases.filter((c) => c.kind === "l2-into-metadata").length;
  console.log(
    `  corpus: ${cases.length} cases generated, ${applied} applied (${notApplicable.length} kinds not applicable to their base), ` +
      `${repairedAsWell} repaired to no more qemu-img errors than qemu-img's own repair, ${failures.length} failures, ` +
      `${exceptions.length} refused repairs, ${overlapRefused}/${overlapCases} overlapping writes refused with the corrupt bit`,
  );
  for (const line of exceptions) console.log(`  exception: ${line}`);
  assert.ok(applied >= 100, `only ${applied} of ${cases.length} cases applied: ${notApplicable.join("; ")}`);
  assert.is(failures.length, 0, failures.slice(0, 20).join("\n"));
});

test.run();
