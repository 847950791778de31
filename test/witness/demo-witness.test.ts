import { suite } from "uvu";
import * as assert from "uvu/assert";
import type { WitnessDemoSummary } from "../../host/cli/witness-demo.ts";
import { etcdTest } from "../support/etcd.ts";
import { runTandem } from "../support/tandem-process.ts";

const test = suite("tandem demo --witness: a partition in which only one side runs, a heal, a re-protection");

test("the partitioned primary fences itself, the standby takes over, and after the heal the pair is protected again", async () => {
  if (!etcdTest("demo --witness")) return;
  const run = await runTandem(["demo", "--witness", "--guest", "reference", "--memory", "4", "--duration", "4", "--kill-after", "1", "--json"], 180_000);
  assert.not.ok(run.timedOut, "the demo ends by itself");
  const last = run.stdout.trim().split("\n").at(-1) ?? "";
  let summary: WitnessDemoSummary;
  try {
    summary = JSON.parse(last) as WitnessDemoSummary;
  } catch {
    throw new Error(`no summary; stdout ends: ${last}\nstderr: ${run.stderr.slice(-2000)}`);
  }
  assert.ok(summary.ok, `ok: ${last}\n${run.stderr.slice(-2000)}`);
  assert.is(run.code, 0);
  assert.is(summary.released_by_a_after_b, 0, "the old primary released nothing once the new one had begun");
  assert.is(summary.output_gaps, 0);
  assert.is(summary.output_duplicates, 0);
  assert.ok(summary.fenced_ms! < summary.lease_ttl_s * 1000, `fenced ${summary.fenced_ms} ms after the cut: before its lease could expire anywhere`);
  assert.ok(summary.takeover_ms! >= summary.fenced_ms!, "the standby ran only after the primary had fenced itself");
  assert.ok(summary.reprotected_generation! > 2, `protected again with a newer generation (${summary.reprotected_generation})`);
});

test.run();
