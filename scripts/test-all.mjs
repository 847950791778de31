// `npm test`: type-checks, then runs the whole suite on Node, Deno and Bun in turn, and ends
// with one line `N passed, N failed` summed over the runtimes. Exits non-zero if the type
// check fails, any test fails, any runtime crashes or times out, or no test ran at all.
//
//   npm test                          all three runtimes
//   npm test -- --runtimes node,bun   a subset
//   npm test -- --grep bitmap         only test files whose path matches
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";

const root = new URL("../", import.meta.url).pathname;
const bin = (name) => join(root, "node_modules", ".bin", name);
const RUNTIMES = {
  node: [process.execPath, "--import", "tsx", "test/run.ts"],
  deno: [bin("deno"), "run", "-A", "test/run.ts"],
  bun: [bin("bun"), "run", "test/run.ts"],
};
// A runtime that takes longer than this is hung. The suite takes minutes; the Linux guest's tests
// (test/guest-linux/) boot it three ways the first time (then start from boot snapshots), which on
// a loaded 2-core machine took the node run past 20 minutes.
const RUNTIME_TIMEOUT_MS = 45 * 60 * 1000;

const { values } = parseArgs({
  options: { runtimes: { type: "string", default: "node,deno,bun" }, grep: { type: "string" } },
});
const chosen = values.runtimes.split(",").filter(Boolean);
for (const name of chosen) {
  if (!(name in RUNTIMES)) {
    console.error(`test-all: unknown runtime '${name}'; expected some of ${Object.keys(RUNTIMES).join(", ")}`);
    process.exit(2);
  }
}

let problems = 0;
console.log("== typecheck (tsc) ==");
const tsc = spawnSync(bin("tsc"), ["-p", "tsconfig.json"], { cwd: root, stdio: "inherit" });
if (tsc.status !== 0) {
  console.log("typecheck FAILED");
  problems++;
}

const dir = mkdtempSync(join(tmpdir(), "tandem-test-"));
let passed = 0;
let failed = 0;
for (const name of chosen) {
  const [command, ...args] = RUNTIMES[name];
  if (values.grep) args.push(values.grep);
  const report = join(dir, `${name}.json`);
  console.log(`\n== tests on ${name} ==`);
  const started = Date.now();
  const result = spawnSync(command, args, {
    cwd: root,
    stdio: "inherit",
    timeout: RUNTIME_TIMEOUT_MS,
    env: { ...process.env, TANDEM_TEST_REPORT: report, FORCE_COLOR: "0", NO_COLOR: "1" },
  });
  console.log(`${name}: ${((Date.now() - started) / 60000).toFixed(1)} min`);
  let counts;
  try {
    counts = JSON.parse(readFileSync(report, "utf8"));
  } catch {
    const why = result.error ? result.error.message : `exit ${result.status ?? result.signal}`;
    console.log(`${name}: the suite did not finish (${why}); counted as one failure`);
    failed++;
    problems++;
    continue;
  }
  passed += counts.passed;
  failed += counts.failed;
  if (result.status !== 0) problems++;
}
rmSync(dir, { recursive: true, force: true });

if (passed + failed === 0) {
  console.log("no test ran");
  problems++;
}
console.log(`\n${passed} passed, ${failed} failed`);
process.exitCode = problems > 0 || failed > 0 ? 1 : 0;
