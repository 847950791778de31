import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { runCli } from "../host/cli/commands.ts";
import { imgCommand } from "../host/cli/img-command.ts";
import { humanSize, parseSize } from "../host/cli/img/size.ts";
import { progressLine, REDRAW_MS, type StatusStream } from "../host/cli/progress.ts";
import { H_BITMAP_OFFSET } from "../host/disk/cow/cow-layout.ts";
import type { DiskInfo } from "../host/disk/disk.ts";
import { formatNames, openDisk } from "../host/disk/registry.ts";
import { ErrorCode } from "../host/errors.ts";
import { seededRandom } from "../host/prng.ts";
import { selfCommand } from "../host/runtime/self-command.ts";
import { errorCode } from "./support/errors.ts";
import { assertMapsAgree } from "./support/map-agree.ts";
import { qemuImg, qemuIo, qemuMap, qemuTest, runQemu, tempDir, type QemuMapExtent } from "./support/qemu.ts";

const test = suite("tandem img: create, info, check, convert and map over every registered format");

const MiB = 1 << 20;
/** Not a multiple of any cluster size, but of 512 (qcow2 sizes are whole sectors). */
const SIZE = 4 * MiB + 1536;
/** The range {@link randomImage} leaves as a hole, for checking that conversions stay sparse there. */
const HOLE = { offset: MiB, length: MiB };

interface Run {
  code: number;
  out: string;
  err: string;
}

/** `tandem img ...args` in this process, with stdout and stderr captured. */
function img(...args: string[]): Run {
  const out: string[] = [];
  const err: string[] = [];
  const code = runCli(["img", ...args], { out: (l) => out.push(l), err: (l) => err.push(l) });
  if (typeof code !== "number") throw new Error(`'tandem img ${args.join(" ")}' returned a promise`);
  return { code, out: out.join("\n"), err: err.join("\n") };
}

/** `tandem img ...args` that must succeed; its stdout. */
function imgOk(...args: string[]): string {
  const r = img(...args);
  if (r.code !== 0) throw new Error(`tandem img ${args.join(" ")} exited ${r.code}: ${r.err}`);
  return r.out;
}

/** Whether every one of `formats` is registered yet; if not, says which test is skipped. */
function formatsTest(name: string, ...formats: string[]): boolean {
  const missing = formats.filter((f) => !formatNames().includes(f));
  if (missing.length === 0) return true;
  console.log(`  (skipped ${name}: format ${missing.join(", ")} not registered yet)`);
  return false;
}

/** The registered ones of the formats tandem img is for. */
function formats(): string[] {
  return ["raw", "qcow2", "cow"].filter((f) => formatNames().includes(f));
}

/**
 * Bytes of a disk: 64 KiB blocks of random data, holes, and half-written blocks, from a seeded
 * PRNG, with {@link HOLE} left zero; written as a raw file at `path`.
 */
function randomImage(path: string, seed: number): Uint8Array {
  const random = seededRandom(seed);
  const bytes = new Uint8Array(SIZE);
  for (let at = 0; at < SIZE; at += 64 * 1024) {
    if (at >= HOLE.offset && at < HOLE.offset + HOLE.length) continue;
    const kind = random();
    const end = Math.min(SIZE, at + 64 * 1024);
    const from = kind < 0.3 ? end : kind < 0.5 ? at + 512 * Math.floor(random() * 128) : at;
    for (let i = from; i < end; i++) bytes[i] = Math.floor(random() * 256);
  }
  bytes.fill(0xa5, SIZE - 1000); // the tail past the last whole cluster
  writeFileSync(path, bytes);
  return bytes;
}

/** What a guest sees of the image at `path`. */
function contents(path: string): Uint8Array {
  const disk = openDisk(path, { readOnly: true });
  try {
    return disk.read(0, disk.size);
  } finally {
    disk.close();
  }
}

function infoJson(path: string): DiskInfo {
  return JSON.parse(imgOk("info", "--json", path)) as DiskInfo;
}

/** The first offset where `a` and `b` differ, or -1 (and -2 for different lengths): a short failure message. */
function firstDifference(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return -2;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

test("sizes read and print as qemu-img's do", () => {
  assert.is(parseSize("512K", "SIZE"), 512 * 1024);
  assert.is(parseSize("1G", "SIZE"), 1 << 30);
  assert.is(parseSize("1.5m", "SIZE"), 1.5 * MiB);
  assert.is(parseSize("2T", "SIZE"), 2 * 1024 ** 4);
  assert.is(parseSize("4096", "SIZE"), 4096);
  assert.is(parseSize("4096B", "SIZE"), 4096);
  for (const bad of ["", "1.5X", "-1", "abc", "0.1K", "1e3", "9999999E"]) assert.is(errorCode(() => parseSize(bad, "SIZE")), ErrorCode.BadArgument, bad);
  assert.is(humanSize(0), "0 B");
  assert.is(humanSize(999), "999 B");
  assert.is(humanSize(1000), "0.977 KiB");
  assert.is(humanSize(196 * 1024), "196 KiB");
  assert.is(humanSize(1 << 30), "1 GiB");
  assert.is(humanSize(1.5 * (1 << 30)), "1.5 GiB");
});

test("create, then info --json: size, format, backing file and cluster size as asked, for every format", () => {
  const t = tempDir("img-create");
  try {
    const base = t.path("base.raw");
    randomImage(base, 1);
    mkdirSync(t.path("sub"));
    for (const format of formats()) {
      const plain = t.path(`plain.${format}`);
      assert.match(imgOk("create", "-f", format, plain, "3M"), `fmt=${format}`);
      const info = infoJson(plain);
      assert.is(info.format, format);
      assert.is(info.virtualSize, 3 * MiB);
      assert.is(info.backingFile, undefined);
      if (format === "raw") {
        assert.is(statSync(plain).size, 3 * MiB);
        continue;
      }
      // A relative backing name is recorded as given and found from the new image's directory.
      const overlay = t.path(`sub/overlay.${format}`);
      imgOk("create", "-f", format, "-b", "../base.raw", "-o", "cluster_size=128K", overlay);
      const layered = infoJson(overlay);
      assert.is(layered.virtualSize, SIZE, "the backing file's size when SIZE is absent");
      assert.is(layered.backingFile, "../base.raw");
      assert.is(layered.backingFormat, "raw");
      assert.is(layered.clusterSize, 128 * 1024);
      assert.equal(firstDifference(contents(overlay), readFileSync(base)), -1, "a new overlay reads as its backing file");
      const sized = t.path(`sized.${format}`);
      imgOk("create", "-f", format, "-b", base, "-F", "raw", sized, "8M");
      assert.is(infoJson(sized).virtualSize, 8 * MiB);
      assert.is(infoJson(sized).backingFile, base);
      const human = imgOk("info", overlay);
      assert.match(human, `file format: ${format}`);
      assert.match(human, `virtual size: ${humanSize(SIZE)} (${SIZE} bytes)`);
      assert.match(human, "backing file: ../base.raw (actual path: ");
      assert.match(human, "backing file format: raw");
      assert.match(human, "cluster_size: 131072");
      const chain = JSON.parse(imgOk("info", "--json", "--backing-chain", overlay)) as DiskInfo[];
      assert.equal(chain.map((i) => [i.format, i.virtualSize]), [[format, SIZE], ["raw", SIZE]]);
    }
  } finally {
    t.remove();
  }
});

test("create refuses an existing file, and leaves no file behind when the format refuses the options", () => {
  const t = tempDir("img-refuse");
  try {
    const file = t.path("taken.raw");
    writeFileSync(file, "keep me");
    const taken = img("create", file, "1M");
    assert.is(taken.code, 1);
    assert.match(taken.err, `tandem: E_DISK_IO: ${file} already exists`);
    assert.is(readFileSync(file, "utf8"), "keep me");
    for (const format of formats().filter((f) => f !== "raw")) {
      const refused = img("create", "-f", format, "-o", "cluster_size=3", t.path(`bad.${format}`), "1M");
      assert.ok(refused.code === 1 || refused.code === 2, `${format}: exit ${refused.code}`);
      assert.match(refused.err, "tandem: ");
      assert.not.ok(existsSync(t.path(`bad.${format}`)), `${format}: no half-made image is left`);
    }
    const raw = img("create", "-f", "raw", "-b", file, t.path("over.raw"));
    assert.is(raw.code, 1);
    assert.match(raw.err, "raw image cannot have a backing file");
    assert.not.ok(existsSync(t.path("over.raw")));
  } finally {
    t.remove();
  }
});

test("info works without the backing file; --backing-chain then names the missing file", () => {
  if (!formatsTest("info without backing", "cow")) return;
  const t = tempDir("img-nobacking");
  try {
    randomImage(t.path("base.raw"), 2);
    imgOk("create", "-f", "cow", "-b", "base.raw", t.path("top.cow"));
    rmSync(t.path("base.raw"));
    assert.is(infoJson(t.path("top.cow")).backingFile, "base.raw");
    const chain = img("info", "--backing-chain", t.path("top.cow"));
    assert.is(chain.code, 1);
    assert.match(chain.err, "E_DISK_BACKING");
    assert.match(chain.err, "base.raw");
  } finally {
    t.remove();
  }
});

test("usage errors exit 2 and say what is wrong", () => {
  const t = tempDir("img-usage");
  try {
    const cases: [string[], string][] = [
      [[], "img needs a subcommand"],
      [["frob"], "unknown img subcommand 'frob'"],
      [["info", "--frob", t.path("x")], "--frob"],
      [["info"], "missing FILE"],
      [["check"], "missing FILE"],
      [["map", "a", "b"], "unexpected 'b'"],
      [["convert", t.path("only-one")], "missing SRC DST"],
      [["create", t.path("x.raw")], "SIZE is missing"],
      [["create", t.path("x.raw"), "12Q"], "'12Q' is not a size"],
      [["create", "-f", "vmdk", t.path("x.raw"), "1M"], "unknown image format; known: raw"],
      [["create", "-F", "raw", t.path("x.raw"), "1M"], "it needs -b BACKING"],
      [["create", "-o", "preallocation=full", t.path("x.raw"), "1M"], "unknown image option 'preallocation'"],
      [["convert", "-O", "vdi", t.path("a"), t.path("b")], "-O vdi: unknown image format"],
      [["check", "-r", "some", t.path("x")], "-r some: give leaks or all"],
    ];
    for (const [args, message] of cases) {
      const r = img(...args);
      assert.is(r.code, 2, args.join(" "));
      assert.match(r.err, message, args.join(" "));
      assert.match(r.err, "tandem img --help", args.join(" "));
    }
    assert.not.ok(existsSync(t.path("x.raw")), "no usage error creates a file");
    const help = img("--help");
    assert.is(help.code, 0);
    for (const sub of ["create", "info", "check", "convert", "map"]) assert.match(help.out, `tandem img ${sub}`);
    const main = runCli(["--help"], { out: (l) => assert.match(l, "tandem img convert"), err: () => {} });
    assert.is(main, 0);
  } finally {
    t.remove();
  }
});

test("check: a clean image exits 0, raw 63 (nothing to check), an image that is not of its -f format 1", () => {
  const t = tempDir("img-check");
  try {
    imgOk("create", t.path("disk.raw"), "1M");
    const raw = img("check", t.path("disk.raw"));
    assert.is(raw.code, 63);
    assert.match(raw.err, "no metadata to check");
    for (const format of formats().filter((f) => f !== "raw")) {
      const file = t.path(`clean.${format}`);
      imgOk("create", "-f", format, file, "2M");
      const clean = img("check", file);
      assert.is(clean.code, 0, clean.err);
      assert.match(clean.out, "No errors were found on the image.");
      const json = JSON.parse(imgOk("check", "--json", "-r", "all", file)) as { format: string; errors: number; leaks: number };
      assert.equal([json.format, json.errors, json.leaks], [format, 0, 0]);
      const notIt = img("check", "-f", format, t.path("disk.raw"));
      assert.is(notIt.code, 1, `${format} check of a raw file`);
      assert.match(notIt.err, "tandem: E_DISK_");
    }
  } finally {
    t.remove();
  }
});

test("check on damaged cow images: errors exit 2, only leaks 3; -r leaks leaves errors, -r all repairs to 0", () => {
  if (!formatsTest("check exit codes on damaged images", "cow")) return;
  const t = tempDir("img-check-damage");
  try {
    // Errors: blocks whose data the file no longer reaches (the file cut short behind the tool's back).
    randomImage(t.path("src.raw"), 12);
    const broken = t.path("broken.cow");
    imgOk("convert", "-O", "cow", t.path("src.raw"), broken);
    truncateSync(broken, statSync(broken).size - 3 * 64 * 1024);
    const errors = img("check", broken);
    assert.is(errors.code, 2, errors.out + errors.err);
    assert.match(errors.out, /\d+ errors were found on the image\./);
    assert.is(img("check", "-r", "leaks", broken).code, 2);
    const json = JSON.parse(imgOk("check", "-r", "all", "--json", broken)) as { errors: number; errorsFixed: number };
    assert.equal([json.errors, json.errorsFixed > 0], [0, true]);
    const clean = img("check", broken);
    assert.is(clean.code, 0);
    assert.is(clean.out.split("\n").filter((l) => l === "No errors were found on the image.").length, 1, "the summary once");

    // Leaks: bitmap states set for blocks past the last one of a one-block image (cow-layout.ts: 2 bits a block, low bits first).
    const leaky = t.path("leaky.cow");
    imgOk("create", "-f", "cow", leaky, "64K");
    const bytes = readFileSync(leaky);
    const bitmapOffset = Number(new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getBigUint64(H_BITMAP_OFFSET, true));
    bytes[bitmapOffset] = 0b10_10_10_00; // blocks 1, 2 and 3 (past the end) zero; block 0 absent
    writeFileSync(leaky, bytes);
    const leaks = img("check", leaky);
    assert.is(leaks.code, 3, leaks.out + leaks.err);
    assert.match(leaks.out, "3 leaked clusters were found on the image.");
    const repaired = img("check", "-r", "leaks", leaky);
    assert.is(repaired.code, 0, repaired.out);
    assert.match(repaired.out, "The following inconsistencies were found and repaired:");
    assert.match(repaired.out, "    3 leaked clusters");
    assert.is(img("check", leaky).code, 0);
  } finally {
    t.remove();
  }
});

test("convert: raw -> qcow2 -> cow -> raw keeps every byte, and the holes stay unallocated", () => {
  const t = tempDir("img-convert");
  try {
    const original = randomImage(t.path("src.raw"), 3);
    let previous = t.path("src.raw");
    for (const format of [...formats().filter((f) => f !== "raw"), "raw"]) {
      const next = t.path(`step-${format}.img`);
      const r = img("convert", "-O", format, previous, next);
      assert.is(r.code, 0, r.err);
      assert.is(r.err, "", "no progress output when stderr is not a terminal");
      assert.is(infoJson(next).format, format);
      assert.is(firstDifference(contents(next), original), -1, `${previous} -> ${format}`);
      if (format !== "raw") {
        const extents = JSON.parse(imgOk("map", "--json", next)) as { start: number; length: number; data: boolean }[];
        const inHole = extents.filter((e) => e.data && e.start < HOLE.offset + HOLE.length && e.start + e.length > HOLE.offset);
        assert.equal(inHole, [], `${format}: nothing allocated in the hole`);
        assert.is(img("check", next).code, 0);
      }
      previous = next;
    }
    assert.is(firstDifference(readFileSync(previous), original), -1, "the raw at the end of the round trip is the raw at its start");
  } finally {
    t.remove();
  }
});

test("convert -B: the new image holds only what differs from its backing file, and reads as the source", () => {
  const overlays = formats().filter((f) => f !== "raw");
  if (overlays.length === 0) return void console.log("  (skipped convert -B: no format with backing files registered yet)");
  const t = tempDir("img-convert-backing");
  try {
    const base = randomImage(t.path("base.raw"), 4);
    base.fill(9, 2 * MiB, 2 * MiB + 64 * 1024);
    writeFileSync(t.path("base.raw"), base);
    const changed = base.slice();
    changed.fill(7, 64 * 1024, 3 * 64 * 1024); // two clusters rewritten
    changed.fill(0, 2 * MiB, 2 * MiB + 64 * 1024); // one cluster zeroed
    writeFileSync(t.path("src.raw"), changed);
    for (const format of overlays) {
      const dst = t.path(`dst.${format}`);
      imgOk("convert", "-O", format, "-B", "base.raw", t.path("src.raw"), dst);
      assert.is(infoJson(dst).backingFile, "base.raw");
      assert.is(firstDifference(contents(dst), changed), -1, format);
      const extents = JSON.parse(imgOk("map", "--json", dst)) as QemuMapExtent[];
      const own = extents.filter((e) => e.depth === 0 && e.present).reduce((n, e) => n + e.length, 0);
      assert.ok(own > 0 && own <= 3 * 128 * 1024, `${format}: ${own} bytes in the top layer`);
      const zeroed = extents.find((e) => e.start <= 2 * MiB && e.start + e.length > 2 * MiB);
      assert.equal([zeroed?.depth, zeroed?.zero, zeroed?.data], [0, true, false], `${format}: zeros over the backing file's data are a zero range, not data`);
    }
  } finally {
    t.remove();
  }
});

test("convert: a failure midway (or a format refusing the options) removes the partly written image", () => {
  const t = tempDir("img-convert-fail");
  try {
    randomImage(t.path("src.raw"), 5);
    const failing: StatusStream = {
      isTTY: true,
      write: () => {
        throw new Error("the terminal went away");
      },
    };
    const io = { out: () => {}, err: () => {} };
    assert.throws(() => imgCommand(["convert", "-O", "raw", t.path("src.raw"), t.path("dst.raw")], io, failing), /terminal went away/);
    assert.not.ok(existsSync(t.path("dst.raw")));
    for (const format of formats().filter((f) => f !== "raw")) {
      const refused = img("convert", "-O", format, "-o", "cluster_size=3", t.path("src.raw"), t.path(`dst.${format}`));
      assert.ok(refused.code !== 0);
      assert.not.ok(existsSync(t.path(`dst.${format}`)));
    }
    writeFileSync(t.path("taken.raw"), "keep me");
    assert.is(img("convert", t.path("src.raw"), t.path("taken.raw")).code, 1);
    assert.is(readFileSync(t.path("taken.raw"), "utf8"), "keep me");
  } finally {
    t.remove();
  }
});

test("progress: percent and MB/s redrawn on a terminal, at most every REDRAW_MS, erased at the end; nothing elsewhere", () => {
  const writes: string[] = [];
  let clock = 0;
  const line = progressLine("converting x", 2 * 1e6, { isTTY: true, write: (s) => writes.push(s) }, () => clock);
  clock = 500;
  line.update(1e6);
  clock = 500 + REDRAW_MS / 2;
  line.update(1.5e6);
  clock = 1000;
  line.update(2e6);
  line.end();
  assert.equal(writes, ["\r\x1b[Kconverting x: 50.0% (2.0 MB/s)", "\r\x1b[Kconverting x: 100.0% (2.0 MB/s)", "\r\x1b[K"]);
  const silent: string[] = [];
  const off = progressLine("converting x", 100, { isTTY: false, write: (s) => silent.push(s) });
  off.update(50);
  off.end();
  assert.equal(silent, []);

  const t = tempDir("img-progress");
  try {
    randomImage(t.path("src.raw"), 6);
    const drawn: string[] = [];
    const io = { out: () => {}, err: () => {} };
    assert.is(imgCommand(["convert", t.path("src.raw"), t.path("dst.raw")], io, { isTTY: true, write: (s) => drawn.push(s) }), 0);
    assert.match(drawn[drawn.length - 2], "100.0%");
    assert.is(drawn[drawn.length - 1], "\r\x1b[K");
  } finally {
    t.remove();
  }
});

test("convert in its own process with stderr a pipe: no progress output, exit 0", () => {
  const t = tempDir("img-pipe");
  try {
    const original = randomImage(t.path("src.raw"), 7);
    const [command, ...args] = selfCommand(fileURLToPath(new URL("../host/cli/main.ts", import.meta.url)), ["img", "convert", t.path("src.raw"), t.path("dst.raw")]);
    const result = spawnSync(command, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], cwd: fileURLToPath(new URL("..", import.meta.url)) });
    assert.is(result.status, 0, result.stderr);
    assert.is(result.stderr, "");
    assert.is(result.stdout, "");
    assert.is(firstDifference(readFileSync(t.path("dst.raw")), original), -1);
  } finally {
    t.remove();
  }
});

test("convert in its own process on a real terminal (util-linux script): the progress line is drawn, then erased", () => {
  if (spawnSync("script", ["--version"], { encoding: "utf8" }).status !== 0) {
    return void console.log("  (skipped convert on a terminal: util-linux `script` not installed)");
  }
  const t = tempDir("img-tty");
  try {
    const original = randomImage(t.path("src.raw"), 11);
    const argv = selfCommand(fileURLToPath(new URL("../host/cli/main.ts", import.meta.url)), ["img", "convert", t.path("src.raw"), t.path("dst.raw")]);
    const quoted = argv.map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(" ");
    const result = spawnSync("script", ["-qec", quoted, "/dev/null"], { encoding: "utf8", cwd: fileURLToPath(new URL("..", import.meta.url)), timeout: 60_000 });
    assert.is(result.status, 0, result.stdout + result.stderr);
    assert.match(result.stdout, /converting \S+src\.raw: 100\.0% \(\d+\.\d MB\/s\)\r\x1b\[K/);
    assert.is(firstDifference(readFileSync(t.path("dst.raw")), original), -1);
  } finally {
    t.remove();
  }
});

test("map: the human table lists data extents with their file; --json has qemu-img's fields", () => {
  const t = tempDir("img-map");
  try {
    randomImage(t.path("a.raw"), 8);
    const table = imgOk("map", t.path("a.raw")).split("\n");
    assert.is(table[0], "Offset          Length          Mapped to       File");
    assert.is(table[1], `0               0x${SIZE.toString(16).padEnd(14)}0               ${t.path("a.raw")}`);
    assert.equal(JSON.parse(imgOk("map", "--json", t.path("a.raw"))), [{ start: 0, length: SIZE, depth: 0, present: true, zero: false, data: true, offset: 0 }]);
  } finally {
    t.remove();
  }
});

test("qemu-img agrees with what img create -f qcow2 makes: info fields, and check exits 0", () => {
  if (!qemuTest("qcow2 create against qemu-img") || !formatsTest("qcow2 create against qemu-img", "qcow2")) return;
  const t = tempDir("img-qemu-create");
  try {
    randomImage(t.path("base.raw"), 9);
    imgOk("create", "-f", "qcow2", t.path("plain.qcow2"), "1G");
    imgOk("create", "-f", "qcow2", "-o", "cluster_size=128K,lazy_refcounts=on", "-b", "base.raw", t.path("over.qcow2"));
    for (const [name, size, cluster, backing] of [["plain.qcow2", 1 << 30, 65536, undefined], ["over.qcow2", SIZE, 131072, "base.raw"]] as const) {
      const info = JSON.parse(qemuImg("info", "--output=json", t.path(name))) as Record<string, unknown>;
      assert.is(info["virtual-size"], size, name);
      assert.is(info["cluster-size"], cluster, name);
      assert.is(info["backing-filename"], backing, name);
      const ours = infoJson(t.path(name));
      assert.equal([ours.virtualSize, ours.clusterSize, ours.backingFile], [size, cluster, backing]);
      const check = runQemu("qemu-img", ["check", t.path(name)]);
      assert.is(check.status, 0, check.stdout + check.stderr);
    }
  } finally {
    t.remove();
  }
});

test("qemu-img compare finds the raw and qcow2 sides of each conversion identical", () => {
  if (!qemuTest("convert against qemu-img compare") || !formatsTest("convert against qemu-img compare", "qcow2")) return;
  const t = tempDir("img-qemu-compare");
  try {
    randomImage(t.path("src.raw"), 10);
    imgOk("convert", "-O", "qcow2", t.path("src.raw"), t.path("a.qcow2"));
    imgOk("convert", "-f", "qcow2", "-O", "raw", t.path("a.qcow2"), t.path("b.raw"));
    for (const [a, b] of [["src.raw", "a.qcow2"], ["a.qcow2", "b.raw"], ["src.raw", "b.raw"]]) {
      const compare = runQemu("qemu-img", ["compare", t.path(a), t.path(b)]);
      assert.is(compare.status, 0, `${a} vs ${b}: ${compare.stdout}${compare.stderr}`);
    }
    assert.is(runQemu("qemu-img", ["check", t.path("a.qcow2")]).status, 0);
  } finally {
    t.remove();
  }
});

/** A qcow2 chain made by qemu-img and written by qemu-io: data, zero clusters, partial clusters, a backing file. */
function qemuChain(path: (name: string) => string): string {
  qemuImg("create", "-f", "qcow2", path("base.qcow2"), "4M");
  qemuIo(path("base.qcow2"), ["write -P 0x11 0 1M", "write -P 0x22 2M 512k"]);
  qemuImg("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", path("top.qcow2"));
  qemuIo(path("top.qcow2"), ["write -P 0x33 64k 4k", "write -z 512k 128k", "write -P 0x44 3M 100k", "write -P 0x55 4190208 512"]);
  return path("top.qcow2");
}

/** The 64 KiB clusters the top layer of `image` holds, as qemu-img map sees them: [offset, reads as zeros]. */
function topClusters(image: string): [number, boolean][] {
  return qemuMap(image)
    .filter((e) => e.depth === 0 && e.present !== false)
    .flatMap((e) => Array.from({ length: e.length / 65536 }, (_, i): [number, boolean] => [e.start + i * 65536, e.zero]));
}

test("convert of a qemu-made qcow2 chain to raw equals qemu-img convert -O raw, byte for byte", () => {
  if (!qemuTest("convert against qemu-img convert") || !formatsTest("convert against qemu-img convert", "qcow2")) return;
  const t = tempDir("img-qemu-convert");
  try {
    const top = qemuChain(t.path);
    qemuImg("convert", "-O", "raw", top, t.path("qemu.raw"));
    imgOk("convert", "-O", "raw", top, t.path("ours.raw"));
    assert.is(firstDifference(readFileSync(t.path("ours.raw")), readFileSync(t.path("qemu.raw"))), -1);
    imgOk("convert", "-O", "qcow2", top, t.path("ours.qcow2"));
    assert.is(runQemu("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", t.path("ours.qcow2"), t.path("qemu.raw")]).status, 0);
    // Rebased onto the same base: only what the top layer changes is stored, zero clusters included.
    imgOk("convert", "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2", top, t.path("rebased.qcow2"));
    assert.is(runQemu("qemu-img", ["compare", "-F", "raw", t.path("rebased.qcow2"), t.path("qemu.raw")]).status, 0);
    assert.is(runQemu("qemu-img", ["check", t.path("rebased.qcow2")]).status, 0);
    assert.equal(topClusters(t.path("rebased.qcow2")), topClusters(top));
    const info = JSON.parse(qemuImg("info", "--output=json", top)) as Record<string, unknown>;
    const ours = infoJson(top);
    assert.equal(
      [ours.virtualSize, ours.clusterSize, ours.backingFile, ours.backingFormat, ours.dirty ?? false],
      [info["virtual-size"], info["cluster-size"], info["backing-filename"], info["backing-filename-format"], info["dirty-flag"]],
    );
  } finally {
    t.remove();
  }
});

test("check of a qcow2 left dirty by a killed qemu-io: same verdict as qemu-img check; -r all repairs it, data kept", () => {
  if (!qemuTest("check against qemu-img check") || !formatsTest("check against qemu-img check", "qcow2")) return;
  const t = tempDir("img-qemu-check");
  try {
    const image = t.path("dirty.qcow2");
    qemuImg("create", "-f", "qcow2", "-o", "lazy_refcounts=on", image, "4M");
    // abort: qemu-io dies without flushing refcounts, leaving the dirty bit set (exit status 134).
    runQemu("qemu-io", ["-c", "write -P 1 0 128k", "-c", "write -P 2 1M 64k", "-c", "abort", image]);
    qemuImg("convert", "-O", "raw", image, t.path("before.raw"));
    assert.is(infoJson(image).dirty, true);
    assert.match(imgOk("info", image), "cleanly shut down: no");
    const verdict = img("check", image);
    assert.is(verdict.code, runQemu("qemu-img", ["check", image]).status, verdict.out);
    assert.ok(verdict.code === 2 || verdict.code === 3, `exit ${verdict.code}`);
    const repaired = img("check", "-r", "all", image);
    assert.is(repaired.code, 0, repaired.out + repaired.err);
    assert.is(runQemu("qemu-img", ["check", image]).status, 0);
    assert.is(runQemu("qemu-img", ["compare", "-F", "raw", image, t.path("before.raw")]).status, 0);
  } finally {
    t.remove();
  }
});

test("map --json of qemu-made qcow2 images equals qemu-img map --output=json", () => {
  if (!qemuTest("map against qemu-img map") || !formatsTest("map against qemu-img map", "qcow2")) return;
  const t = tempDir("img-qemu-map");
  try {
    const top = qemuChain(t.path);
    copyFileSync(t.path("base.qcow2"), t.path("alone.qcow2"));
    for (const image of [t.path("alone.qcow2"), top]) {
      const ours = JSON.parse(imgOk("map", "--json", image)) as QemuMapExtent[];
      assertMapsAgree(ours, qemuMap(image), image);
    }
  } finally {
    t.remove();
  }
});

test.run();
