/**
 * The test driver, the same on Node (through tsx), Deno and Bun: finds test/**\/*.test.ts,
 * runs them with uvu, and counts results itself. uvu 0.5.6 prints no failure count and counts
 * a suite whose `before` hook throws as neither passed nor failed, so failed = total - passed.
 *
 *   node --import tsx test/run.ts [pattern]    deno run -A test/run.ts    bun run test/run.ts
 *
 * With TANDEM_TEST_REPORT=FILE it also writes {runtime, passed, failed, skipped} there as JSON
 * for scripts/test-all.mjs. Exits 1 on any failure or when no test ran, and exits even if a test
 * left a timer or socket open (TANDEM_TEST_OPEN=1 names what it left).
 */

import { writeFileSync } from "node:fs";
import { parse } from "uvu/parse";
import { runtimeName } from "../host/runtime/runtime.ts";

type Runner = () => Promise<[string | true, number, number, number]>;
type Group = [string | null, ...Runner[]];
const g = globalThis as unknown as { UVU_DEFER: number; UVU_INDEX: number; UVU_QUEUE: Group[] };

// Only *.test.ts files are tests; an argument narrows them to the paths it matches.
const pattern = process.argv[2] ? new RegExp(`^(?=.*(?:${process.argv[2]})).*\\.test\\.ts$`) : /\.test\.ts$/;
const { suites } = await parse("test", pattern, { cwd: new URL("..", import.meta.url).pathname });

// uvu 0.5.6 (pinned) queues each file's suites in UVU_QUEUE when UVU_DEFER is set.
g.UVU_DEFER = 1;
await import("uvu");
let index = 0;
for (const suite of suites) {
  g.UVU_INDEX = index++;
  g.UVU_QUEUE.push([suite.name]);
  await import(new URL(`file://${suite.file}`).href);
}

let total = 0;
let passed = 0;
let skipped = 0;
// Each file's time is printed after it, so that a slow file shows in CI's log (the whole run has
// a time limit, and three runtimes share it).
for (const [name, ...runners] of g.UVU_QUEUE) {
  const started = performance.now();
  if (name != null) process.stdout.write(`${name}\n`);
  for (const runner of runners) {
    const [errors, ran, skips, max] = await runner();
    total += max;
    passed += ran;
    skipped += skips;
    if (typeof errors === "string" && errors.length > 0) process.stdout.write(`\n${errors}\n`);
  }
  if (name != null) process.stdout.write(`  ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
}

const failed = total - passed;
const runtime = runtimeName();
console.log(`\n${runtime}: ${suites.length} files, ${total} tests, ${passed} ok, ${failed} not ok, ${skipped} skipped`);
const report = process.env.TANDEM_TEST_REPORT;
if (report) writeFileSync(report, JSON.stringify({ runtime, passed, failed, skipped }));
// Whatever a test left open (a server, a timer, a worker's port) must not keep the runtime alive
// after the count, as one did in CI for 45 minutes: exit. TANDEM_TEST_OPEN=1 names what was
// still open (on Node), to find the leak; pending timers and exiting children show there too.
const open = (process as { getActiveResourcesInfo?: () => string[] }).getActiveResourcesInfo?.() ?? [];
const leftovers = open.filter((kind) => kind !== "TTYWrap" && kind !== "PipeWrap");
if (process.env.TANDEM_TEST_OPEN === "1" && leftovers.length > 0) {
  const counts = new Map<string, number>();
  for (const kind of leftovers) counts.set(kind, (counts.get(kind) ?? 0) + 1);
  console.log(`still open after the suite: ${[...counts].map(([kind, n]) => `${kind} ×${n}`).join(", ")}`);
}
process.exit(failed > 0 || total === 0 ? 1 : 0);
