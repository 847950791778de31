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

test("kill -9 at a random moment: the standby takes over with the committed disk; output exact (the built-in guest in v86)", async () => {
  const killAfter = (0.2 + Math.random() * 1.5).toFixed(2);
  const { code, summary } = await demo("--kill-after", killAfter);
  const context = `--kill-after ${killAfter}: ${JSON.stringify(summary)}`;
  assert.is(code, 0, context);
  assert.is(summary.ok, true, context);
  assert.is(summary.output_gaps, 0, context);
  assert.is(summary.output_duplicates, 0, context);
  assert.is(summary.disk_verified, true, context);
  assert.is(summary.disk_at_takeover_verified, true, `the standby's disk is the checkpoint's: ${context}`);
  assert.ok(typeof summary.failover_ms === "number", `a takeover happened: ${context}`);
});

for (const guest of ["v86", "reference"]) {
  test(`kill -9: the standby holds, byte for byte, a checkpoint the primary recorded; output exact; the disk holds (${guest})`, async () => {
    const { code, summary } = await demo("--guest", guest, "--verify-state");
    assert.is(code, 0, JSON.stringify(summary));
    assert.is(summary.ok, true);
    assert.ok((summary.checkpoints as number) > 5, "it replicated");
    assert.is(summary.output_gaps, 0);
    assert.is(summary.output_duplicates, 0);
    assert.is(summary.disk_verified, true);
    // v86's saved device state is not byte-stable between two saves, so for it RAM and disk only.
    assert.is(summary.state_verified, true, "the state hashes as the primary's checkpoint did");
    assert.ok(typeof summary.failover_ms === "number", "a takeover happened");
    assert.ok((summary.first_standby_counter as number) <= (summary.last_primary_counter as number) + 1,
      "the standby continued from at most the next counter (earlier ones are re-released and kept once)");
  });
}

test("--no-kill: the primary stops cleanly and the standby stands down", async () => {
  const { code, summary } = await demo("--no-kill");
  assert.is(code, 0, JSON.stringify(summary));
  assert.is(summary.failover_ms, null);
  assert.is(summary.output_gaps, 0);
});

test.run();
