import { spawn } from "node:child_process";
import { copyFileSync, readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { FileBlockFile, type BlockFile } from "../host/disk/block-file.ts";
import type { Disk } from "../host/disk/disk.ts";
import { H_REFCOUNT_TABLE_OFFSET } from "../host/disk/qcow2/header.ts";
import { qcow2Format } from "../host/disk/qcow2/qcow2-format.ts";
import { createImage, openDisk } from "../host/disk/registry.ts";
import { seededRandom } from "../host/prng.ts";
import { selfCommand } from "../host/runtime/self-command.ts";
import { killWorkload } from "./support/qcow2-kill-workload.ts";
import { qemuCheck, qemuImg, qemuTest, tempDir } from "./support/qemu.ts";

const test = suite("qcow2 crash consistency: every recorded prefix and real kill -9 leave leaks at most, and flushed data intact");

const KiB = 1024;
const MiB = 1024 * KiB;
/** TANDEM_LONG_TESTS=1 checks more cut points and runs longer workloads. */
const LONG = process.env.TANDEM_LONG_TESTS === "1";
const dir = tempDir("qcow2-crash");
/** Writes below this offset touch the header (all of tandem's header fields lie in the first 112 bytes). */
const HEADER_AREA = 112;

/** One thing a file saw, in order. */
type Event = { kind: "write"; offset: number; data: Uint8Array } | { kind: "sync" } | { kind: "truncate"; length: number };

/** A BlockFile that passes everything through to a real file and records every write, sync and truncate. */
class RecordingFile implements BlockFile {
  readonly events: Event[] = [];
  readonly #inner: BlockFile;
  constructor(inner: BlockFile) {
    this.#inner = inner;
  }
  get path(): string {
    return this.#inner.path;
  }
  get readOnly(): boolean {
    return this.#inner.readOnly;
  }
  size(): number {
    return this.#inner.size();
  }
  read(offset: number, target: Uint8Array): number {
    return this.#inner.read(offset, target);
  }
  write(offset: number, data: Uint8Array): void {
    this.events.push({ kind: "write", offset, data: data.slice() });
    this.#inner.write(offset, data);
  }
  sync(): void {
    this.events.push({ kind: "sync" });
    this.#inner.sync();
  }
  truncate(length: number): void {
    this.events.push({ kind: "truncate", length });
    this.#inner.truncate(length);
  }
  close(): void {
    this.#inner.close();
  }
}

/** The disk bytes after the last completed flush before a cut, and which bytes later operations may have changed. */
interface Durable {
  /** Events recorded when the flush returned. */
  events: number;
  /** Expected disk content at that moment. */
  content: Uint8Array;
}

interface Recorded {
  initial: Uint8Array;
  events: Event[];
  flushes: Durable[];
  /** Every operation: its byte range and the number of events recorded before it started. */
  ops: { offset: number; length: number; startEvent: number }[];
}

/** Creates an image, opens it through a RecordingFile and runs random allocating writes, discards and flushes. */
function record(
  name: string,
  options: { clusterSize: number; lazy: boolean; backing: boolean; seed: number; ops: number; size: number; maxLength: number },
): Recorded {
  const image = dir.path(`${name}.qcow2`);
  const size = options.size;
  const base = dir.path(`${name}-base.raw`);
  const expected = new Uint8Array(size);
  if (options.backing) {
    const bytes = new Uint8Array(size - 64 * KiB);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 31 + (i >> 9)) & 0xff;
    writeFileSync(base, bytes);
    expected.set(bytes);
  }
  createImage(image, "qcow2", {
    size,
    clusterSize: options.clusterSize,
    lazyRefcounts: options.lazy,
    ...(options.backing ? { backingFile: `${name}-base.raw`, backingFormat: "raw" } : {}),
  });
  const initial = new Uint8Array(readFileSync(image));
  const file = new RecordingFile(FileBlockFile.open(image));
  const disk: Disk = qcow2Format.open(file, {
    openBacking: (backingName, format) => openDisk(dir.path(backingName), { readOnly: true, ...(format ? { format } : {}) }),
  });
  const random = seededRandom(options.seed);
  const flushes: Durable[] = [{ events: 0, content: expected.slice() }];
  const ops: Recorded["ops"] = [];
  for (let i = 0; i < options.ops; i++) {
    const length = 1 + Math.floor(random() * options.maxLength);
    const offset = Math.floor(random() * (size - length));
    ops.push({ offset, length, startEvent: file.events.length });
    if (random() < 0.85) {
      const data = new Uint8Array(length).fill(1 + Math.floor(random() * 255));
      disk.write(offset, data);
      expected.set(data, offset);
    } else {
      disk.discard(offset, length);
      expected.fill(0, offset, offset + length);
    }
    if (random() < 0.15) {
      disk.flush();
      flushes.push({ events: file.events.length, content: expected.slice() });
    }
  }
  disk.close();
  flushes.push({ events: file.events.length, content: expected.slice() });
  return { initial, events: file.events, flushes, ops };
}

/**
 * Replays cuts of the recorded events onto the initial image. Even cut points replay the exact
 * prefix; odd ones replay everything up to the last sync before the cut and then only a random
 * subset of the writes after it, since writes between two syncs may reach the disk in any order
 * (this is what catches a missing sync). For each cut, qemu-img check must find leaks at most
 * (or, with lazy refcounts, tandem's open for writing must repair the image to a clean check),
 * and whatever the last flush before the cut made durable, and no later operation touched, must
 * read back the same through tandem and through qemu-img convert.
 */
function replayPrefixes(name: string, recorded: Recorded, lazy: boolean, cuts: number): number {
  const synced = dir.path(`${name}-synced.qcow2`);
  writeFileSync(synced, recorded.initial);
  const file = FileBlockFile.open(synced);
  const total = recorded.events.length;
  const points = new Set<number>([total]);
  for (let i = 0; i < cuts; i++) points.add(Math.round(((i + 1) * total) / (cuts + 1)));
  // Header updates (refcount table moves, the dirty bit) are rare and brief: cut exactly around each one too.
  const exact = new Set<number>();
  recorded.events.forEach((event, i) => {
    if (event.kind === "write" && event.offset < HEADER_AREA && i > 0) [i, i + 1].forEach((cut) => exact.add(cut));
  });
  const random = seededRandom(cuts);
  const apply = (target: BlockFile, event: Event): void => {
    if (event.kind === "write") target.write(event.offset, event.data);
    else if (event.kind === "truncate") target.truncate(event.length);
  };
  let applied = 0;
  let checked = 0;
  try {
    for (const [index, cut] of [...new Set([...points, ...exact])].sort((a, b) => a - b).entries()) {
      let lastSync = cut;
      while (lastSync > 0 && recorded.events[lastSync - 1].kind !== "sync") lastSync--;
      for (; applied < lastSync; applied++) apply(file, recorded.events[applied]);
      const image = dir.path(`${name}-cut.qcow2`);
      copyFileSync(synced, image);
      const cutFile = FileBlockFile.open(image);
      const reorder = index % 2 === 1 && !exact.has(cut);
      for (let i = lastSync; i < cut; i++) if (!reorder || recorded.events[i].kind !== "write" || random() < 0.5) apply(cutFile, recorded.events[i]);
      cutFile.close();
      const what = `cut ${cut}/${total}${reorder ? " (unsynced writes reordered)" : ""}`;
      if (lazy) {
        // Refcounts may lag behind here (that is what the dirty bit says): the repair must fix it.
        openDisk(image).close();
        const repaired = qemuCheck(image);
        assert.is(repaired.status, 0, `${what}: after tandem's repair: ${JSON.stringify(repaired.report)}`);
      } else {
        const check = qemuCheck(image);
        assert.ok(check.status === 0 || check.status === 3, `${what}: qemu-img check exited ${check.status} (only 0 or 3 allowed): ${JSON.stringify(check.report)}`);
      }
      const durable = [...recorded.flushes].reverse().find((f) => f.events <= cut) as Durable;
      const untouched = new Uint8Array(durable.content.length).fill(1);
      for (const op of recorded.ops) {
        if (op.startEvent >= durable.events && op.startEvent < cut) untouched.fill(0, op.offset, op.offset + op.length);
      }
      const disk = openDisk(image, { readOnly: true });
      const ours = disk.read(0, disk.size);
      disk.close();
      const converted = dir.path(`${name}-cut.raw`);
      qemuImg("convert", "-O", "raw", image, converted);
      const theirs = new Uint8Array(readFileSync(converted));
      for (let i = 0; i < ours.length; i++) {
        if (untouched[i] === 1 && (ours[i] !== durable.content[i] || theirs[i] !== durable.content[i])) {
          assert.unreachable(`${what}: byte ${i} flushed as ${durable.content[i]} reads ${ours[i]} in tandem and ${theirs[i]} in qemu`);
        }
      }
      checked++;
    }
  } finally {
    file.close();
  }
  return checked;
}

for (const config of [
  // 512-byte clusters and large writes: the file outgrows what one refcount table cluster covers (8 MiB).
  { name: "512-backing-growth", clusterSize: 512, lazy: false, backing: true, seed: 3, size: 16 * MiB, maxLength: 512 * KiB, grows: true },
  { name: "4k", clusterSize: 4 * KiB, lazy: false, backing: false, seed: 4, size: 2 * MiB, maxLength: 12 * KiB, grows: false },
  { name: "64k-lazy", clusterSize: 64 * KiB, lazy: true, backing: true, seed: 5, size: 2 * MiB, maxLength: 192 * KiB, grows: false },
]) {
  test(`every sampled prefix of the writes leaves a consistent image (${config.name})`, () => {
    if (!qemuTest(`qcow2 crash replay ${config.name}`)) return;
    const recorded = record(config.name, { ...config, ops: LONG ? 400 : 80 });
    assert.ok(recorded.events.filter((e) => e.kind === "sync").length > 5, "the run flushed");
    if (config.grows) {
      const header = readFileSync(dir.path(`${config.name}.qcow2`));
      assert.ok(new DataView(header.buffer, header.byteOffset).getBigUint64(H_REFCOUNT_TABLE_OFFSET) !== 512n, "the refcount table moved (grew)");
    }
    const checked = replayPrefixes(config.name, recorded, config.lazy, LONG ? 200 : 30);
    assert.ok(checked >= 30, `${checked} cut points checked`);
  });
}

/**
 * Runs the kill writer on `image` and SIGKILLs it `delayMs` after it reports `killAfter`
 * operations flushed (so the kill lands mid-run however fast the machine is); returns the last
 * flushed operation count it printed, and whether it finished anyway.
 */
async function runAndKill(image: string, seed: number, operations: number, killAfter: number, delayMs: number): Promise<{ flushed: number; done: boolean }> {
  const script = fileURLToPath(new URL("./support/qcow2-kill-writer.ts", import.meta.url));
  const [command, ...args] = selfCommand(script, [image, String(seed), "8", String(operations)]);
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, TANDEM_QCOW2_KILL_WRITER: "1" } });
  let text = "";
  let flushed = 0;
  let done = false;
  let reached: () => void = () => {};
  const isReached = new Promise<void>((resolve) => (reached = resolve));
  child.stdout!.on("data", (chunk: Uint8Array) => {
    text += new TextDecoder().decode(chunk);
    const lines = text.split("\n");
    text = lines.pop() ?? "";
    for (const line of lines) {
      if (line === "done") done = true;
      else if (line.startsWith("flushed ")) {
        flushed = Number(line.slice(8));
        if (flushed >= killAfter) reached();
      }
    }
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  await Promise.race([isReached, exited]);
  await new Promise((resolve) => setTimeout(resolve, delayMs));
  child.kill("SIGKILL");
  await exited;
  return { flushed, done };
}

test("kill -9 at random moments: qemu-img check finds leaks at most, every flushed write is intact", async () => {
  if (!qemuTest("qcow2 kill -9")) return;
  const random = seededRandom(77);
  const size = 16 * MiB;
  const operations = 8000;
  let killedMidway = 0;
  let flushedSomething = 0;
  for (let round = 0; round < 3; round++) {
    const image = dir.path(`killed-${round}.qcow2`);
    createImage(image, "qcow2", { size, clusterSize: [4 * KiB, 64 * KiB, 512][round] });
    const seed = 100 + round;
    const killAfter = 8 * (1 + Math.floor(random() * 150));
    const { flushed, done } = await runAndKill(image, seed, operations, killAfter, Math.floor(random() * 20));
    if (!done) killedMidway++;
    if (flushed > 0) flushedSomething++;
    const check = qemuCheck(image);
    assert.ok(check.status === 0 || check.status === 3, `round ${round}: qemu-img check exited ${check.status}: ${JSON.stringify(check.report)}`);
    // The expected content after `flushed` operations, and what operations after them may have changed.
    const ops = killWorkload(seed, size, operations);
    const expected = new Uint8Array(size);
    const untouched = new Uint8Array(size).fill(1);
    ops.forEach((op, i) => {
      if (i < flushed) {
        if (op.kind === "write") expected.set(op.data, op.offset);
        else expected.fill(0, op.offset, op.offset + op.data.length);
      } else {
        untouched.fill(0, op.offset, op.offset + op.data.length);
      }
    });
    const disk = openDisk(image, { readOnly: true });
    const ours = disk.read(0, size);
    disk.close();
    const converted = dir.path(`killed-${round}.raw`);
    qemuImg("convert", "-O", "raw", image, converted);
    const theirs = new Uint8Array(readFileSync(converted));
    let mismatches = 0;
    for (let i = 0; i < size; i++) if (untouched[i] === 1 && (ours[i] !== expected[i] || theirs[i] !== expected[i])) mismatches++;
    assert.is(mismatches, 0, `round ${round}: ${mismatches} flushed bytes differ after the kill (${flushed} operations flushed)`);
  }
  assert.ok(killedMidway >= 1, "at least one writer died mid-run");
  assert.ok(flushedSomething >= 1, "at least one writer flushed before it died");
});

test.after(() => dir.remove());

test.run();
