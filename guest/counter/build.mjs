// Builds tandem's built-in guest: guest/counter/counter.asm -> guest/counter/counter.bin.
//
//   node guest/counter/build.mjs           assemble and (re)write counter.bin
//   node guest/counter/build.mjs --check   assemble into a temp file; exit 1 if it differs
//                                          from the committed counter.bin
//
// counter.bin is committed so users need only Node and npm; this script is for whoever edits
// the source. nasm's flat-binary output has no timestamps or paths, so the same source and
// nasm version give the same bytes (built with NASM 2.16.01, Debian bookworm's `nasm`).
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL(".", import.meta.url));
const source = join(here, "counter.asm");
const committed = join(here, "counter.bin");
const check = process.argv.includes("--check");

function fail(message) {
  console.error(`guest/counter/build.mjs: ${message}`);
  process.exit(1);
}

function nasmVersion() {
  const r = spawnSync("nasm", ["-v"], { encoding: "utf8" });
  if (r.error) {
    if (r.error.code === "ENOENT") {
      fail("nasm is not installed (not on PATH). Install the Debian package `nasm` " +
        "(sudo apt-get install nasm) or your system's nasm 2.16 package.");
    }
    fail(`cannot run nasm: ${r.error.message}`);
  }
  return r.stdout.trim();
}

function assemble(output) {
  const r = spawnSync("nasm", ["-f", "bin", "-o", output, source], { encoding: "utf8" });
  if (r.status !== 0) fail(`nasm failed (${r.status}):\n${r.stderr}`);
  if (r.stderr.trim()) process.stderr.write(r.stderr);
}

const version = nasmVersion();
if (!check) {
  assemble(committed);
  console.log(`wrote ${committed} (${readFileSync(committed).length} bytes, ${version})`);
} else {
  const dir = mkdtempSync(join(tmpdir(), "tandem-guest-"));
  try {
    const fresh = join(dir, "counter.bin");
    assemble(fresh);
    if (!existsSync(committed)) fail(`${committed} is missing; run: node guest/counter/build.mjs`);
    const a = readFileSync(fresh);
    const b = readFileSync(committed);
    if (!a.equals(b)) {
      fail(`counter.bin is stale: assembling counter.asm with ${version} gives ${a.length} bytes ` +
        `that differ from the committed ${b.length}. Run: node guest/counter/build.mjs ` +
        "(if counter.asm did not change, a different nasm version is the likely cause)");
    }
    console.log(`counter.bin is up to date (${b.length} bytes, ${version})`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
