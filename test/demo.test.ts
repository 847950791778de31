import { suite } from "uvu";
import * as assert from "uvu/assert";
import { runCli } from "../host/cli/commands.ts";

const test = suite("tandem demo: a real primary process killed with SIGKILL, the standby takes over");

async function demo(...args: string[]): Promise<{ code: number; summary: Record<string, unknown> }> {
  const out: string[] = [];
  const code = await runCli(["demo", "--json", "--memory", "8", "--interval", "20", "--duration", "3", "--kill-after", "1.5", ...args], {
    out: (line) => out.push(line),
    err: () => {},
  });
  return { code, summary: JSON.parse(out[out.length - 1]) as Record<string, unknown> };
}

test("kill -9: the standby takes over holding, byte for byte, a checkpoint the primary recorded; output exact; the disk holds", async () => {
  const { code, summary } = await demo("--verify-state");
  assert.is(code, 0, JSON.stringify(summary));
  assert.is(summary.ok, true);
  assert.ok((summary.checkpoints as number) > 5, "it replicated");
  assert.is(summary.output_gaps, 0);
  assert.is(summary.output_duplicates, 0);
  assert.is(summary.disk_verified, true);
  assert.is(summary.state_verified, true, "RAM, disk and devices hash as the primary's checkpoint did");
  assert.ok(typeof summary.failover_ms === "number", "a takeover happened");
  assert.ok((summary.first_standby_counter as number) <= (summary.last_primary_counter as number) + 1,
    "the standby continued from at most the next counter (earlier ones are re-released and kept once)");
});

test("--no-kill: the primary stops cleanly and the standby stands down", async () => {
  const { code, summary } = await demo("--no-kill");
  assert.is(code, 0, JSON.stringify(summary));
  assert.is(summary.failover_ms, null);
  assert.is(summary.output_gaps, 0);
});

test.run();
