import { suite } from "uvu";
import * as assert from "uvu/assert";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { runCli } from "../../host/cli/commands.ts";
import { createImage } from "../../host/disk/registry.ts";
import { selfCommand } from "../../host/runtime/self-command.ts";
import { until } from "../support/session.ts";

const test = suite("the CLI's guest file and guest flags: the guest both sides build, bad ones refused with exit 2");
const dir = mkdtempSync(join(tmpdir(), "tandem-guest-cli-"));
const MAIN = fileURLToPath(new URL("../../host/cli/main.ts", import.meta.url));
const COUNTER = fileURLToPath(new URL("../../guest/counter/counter.bin", import.meta.url));

/** A guest file for the built-in counter guest, booted as any multiboot kernel, with a disk image for the sectors it stamps. */
function guestFile(name: string, memory: number, extra: object = {}): string {
  const path = join(dir, name);
  writeFileSync(path, JSON.stringify({ multiboot: COUNTER, cmdline: "hz=50 dirty=4 disk=1", memory, hda: "counter.raw", ...extra }));
  return path;
}
createImage(join(dir, "counter.raw"), "raw", { size: 256 * 1024 });

async function cli(...args: string[]): Promise<{ code: number; out: string[]; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runCli(args, { out: (l) => out.push(l), err: (l) => err.push(l) });
  return { code, out, err: err.join("\n") };
}

/** Runs `tandem ARGS` as its own process; resolves with its exit code, stdout lines and stderr. */
function run(args: string[], onLine: (line: string) => void = () => {}): { exited: Promise<{ code: number | null; err: string }> } {
  const [command, ...rest] = selfCommand(MAIN, args);
  const child = spawn(command, rest, { stdio: ["ignore", "pipe", "pipe"] });
  let text = "";
  let err = "";
  child.stdout!.on("data", (chunk: Uint8Array) => {
    text += new TextDecoder().decode(chunk);
    const lines = text.split("\n");
    text = lines.pop()!;
    lines.forEach(onLine);
  });
  child.stderr!.on("data", (chunk: Uint8Array) => (err += new TextDecoder().decode(chunk)));
  return { exited: new Promise((resolve) => child.once("exit", (code) => resolve({ code, err }))) };
}

test("a bad guest file or guest flag: E_GUEST_FILE naming the field, exit 2, no stack trace", async () => {
  const cases: [string, string[], string][] = [
    ["bad JSON", ["--guest-file", join(dir, "bad.json")], "is not JSON"],
    ["unknown key", ["--guest-file", guestFile("unknown.json", 8, { kernel: "x" })], `"kernel" is not a key of a guest file`],
    ["bad memory", ["--guest-file", guestFile("memory.json", 3)], `"memory" must be a whole number of MiB from 4 to 1920, not 3`],
    ["missing disk", ["--guest-file", guestFile("disk.json", 8, { hda: "nothing.img" })], `"hda" ${join(dir, "nothing.img")} does not exist`],
    ["missing guest file", ["--guest-file", join(dir, "none.json")], "cannot read the guest file"],
    ["missing kernel flag", ["--bzimage", join(dir, "vmlinuz")], `--bzimage ${join(dir, "vmlinuz")} does not exist`],
    ["bad disk flag", ["--hda", "x.img,cache=none"], `--hda "cache=none" is not a disk option`],
    ["bad boot order", ["--multiboot", COUNTER, "--boot-order", "usb"], `--boot-order "usb": up to three of fda, hda`],
  ];
  writeFileSync(join(dir, "bad.json"), "{ memory: 8 }");
  for (const command of ["save", "restore"]) {
    for (const [name, args, phrase] of cases) {
      const r = await cli(command, join(dir, "image"), ...args);
      assert.is(r.code, 2, `${command}, ${name}: ${r.err}`);
      assert.ok(r.err.startsWith("tandem: E_GUEST_FILE: "), `${name}: ${r.err}`);
      assert.ok(r.err.includes(phrase), `${name}: ${r.err}`);
      assert.not.match(r.err, /\n\s+at /, "no stack trace");
    }
  }
  const reference = await cli("save", join(dir, "image"), "--guest", "reference", "--guest-file", guestFile("ok.json", 8));
  assert.is(reference.code, 2);
  assert.match(reference.err, "E_BAD_ARGUMENT: --guest reference takes no --guest-file");
  // The executable itself: the same message on stderr and exit status 2.
  const child = await run(["primary", "--connect", "1", "--guest-file", guestFile("disk.json", 8, { hda: "nothing.img" })]).exited;
  assert.is(child.code, 2, child.err);
  assert.match(child.err, `tandem: E_GUEST_FILE: ${join(dir, "disk.json")}: "hda" ${join(dir, "nothing.img")} does not exist`);
  assert.not.match(child.err, /\n\s+at /);
});

test("save and restore from a guest file; a restore into another guest is refused, naming what differs", async () => {
  const image = join(dir, "counter.image");
  const saved = await cli("save", image, "--guest-file", guestFile("guest8.json", 8), "--run", "1.5", "--json");
  assert.is(saved.code, 0, saved.err);
  const at = JSON.parse(saved.out[0]).counter as number;
  assert.ok(at > 0, `saved at counter ${at}`);
  const restored = await cli("restore", image, "--guest-file", guestFile("guest8-again.json", 8), "--run", "0.3", "--json");
  assert.is(restored.code, 0, restored.err);
  assert.is(JSON.parse(restored.out[0]).firstOutput, at + 1, "the restored guest goes on from the saved counter");
  // The same guest from flags instead of a file is the same guest.
  const flags = await cli("restore", image, "--multiboot", COUNTER, "--cmdline", "hz=50 dirty=4 disk=1", "--memory", "8", "--hda", join(dir, "counter.raw"), "--run", "0.1", "--json");
  assert.is(flags.code, 0, flags.err);
  const other = await cli("restore", image, "--guest-file", guestFile("guest16.json", 16, { cmdline: "hz=50 dirty=5 disk=1" }), "--run", "0.1");
  assert.is(other.code, 1, other.err);
  assert.match(other.err, `tandem: E_GUEST_MISMATCH: the image's guest is not this machine's: memory: image 8 MiB, machine 16 MiB; cmdline: image "hz=50 dirty=4 disk=1", machine "hz=50 dirty=5 disk=1"`);
  const override = await cli("restore", image, "--guest-file", guestFile("guest8-b.json", 8), "--memory", "12", "--run", "0.1");
  assert.is(override.code, 1, "--memory overrides the file's");
  assert.match(override.err, "memory: image 8 MiB, machine 12 MiB");
});

test("two processes: a secondary built from another guest file refuses the primary at connect; both say why", async () => {
  const socket = join(dir, "sock");
  let listening = false;
  const secondary = run(["secondary", "--listen", socket, "--guest-file", guestFile("standby.json", 8), "--json"], (line) => {
    if (line.includes('"listening"')) listening = true;
  });
  await until(() => listening, 20_000);
  const primary = await run(["primary", "--connect", socket, "--guest-file", guestFile("primary.json", 16)]).exited;
  const standby = await secondary.exited;
  assert.is(standby.code, 1, standby.err);
  assert.match(standby.err, "tandem: E_GUEST_MISMATCH: the primary's guest is not this standby's: memory: primary 16 MiB, standby 8 MiB");
  assert.not.match(standby.err, /\n\s+at /);
  assert.is(primary.code, 1, primary.err);
  assert.match(primary.err, "tandem: E_GUEST_MISMATCH: the standby refused this guest");
  assert.match(primary.err, "memory 16 MiB");
});

test("demo with a guest file naming a disk image: the standby writes its own image, takes over, and the disk holds", async () => {
  const image = join(dir, "primary-disk.raw");
  createImage(image, "raw", { size: 256 * 1024 });
  const file = guestFile("demo.json", 8, { hda: { path: "primary-disk.raw", format: "raw" } });
  const out: string[] = [];
  const err: string[] = [];
  const code = await runCli(["demo", "--json", "--guest-file", file, "--interval", "20", "--duration", "3", "--kill-after", "1.5"], {
    out: (l) => out.push(l), err: (l) => err.push(l),
  });
  const summary = JSON.parse(out[out.length - 1]) as Record<string, unknown>;
  assert.is(code, 0, `${JSON.stringify(summary)} ${err.join("\n")}`);
  assert.is(summary.ok, true);
  assert.ok(typeof summary.failover_ms === "number", "a takeover happened");
  assert.is(summary.output_gaps, 0);
  assert.is(summary.output_duplicates, 0);
  assert.is(summary.disk_at_takeover_verified, true, "the standby's own image held the checkpoint's disk");
  // The primary process wrote the image the file names: the guest stamps its sectors.
  const written = readFileSync(image);
  assert.ok(written.some((b) => b !== 0), "the primary's image holds the guest's writes");
});

test.after(() => rmSync(dir, { recursive: true, force: true }));

test.run();
