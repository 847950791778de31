import { suite } from "uvu";
import * as assert from "uvu/assert";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { runCli } from "../host/cli/commands.ts";
import { CounterLog } from "../host/cli/guests.ts";
import { selfCommand } from "../host/runtime/self-command.ts";
import { until } from "./support/session.ts";

const test = suite("tandem save, restore and migrate");
const dir = mkdtempSync(join(tmpdir(), "tandem-cli-"));

async function cli(...args: string[]): Promise<{ code: number; lines: string[] }> {
  const lines: string[] = [];
  const code = await runCli(args, { out: (l) => lines.push(l), err: () => {} });
  return { code, lines };
}

for (const [guest, memory, run] of [["reference", "4", "0.2"], ["v86", "8", "0.8"]]) {
  test(`save after running, restore, and the counter goes on from where it was saved (${guest})`, async () => {
    const file = join(dir, `guest-${guest}`);
    const saved = await cli("save", file, "--guest", guest, "--memory", memory, "--hz", "50", "--run", run, "--json");
    assert.is(saved.code, 0);
    const at = JSON.parse(saved.lines[0]).counter as number;
    assert.ok(at > 0, `saved at counter ${at}`);
    const restored = await cli("restore", file, "--guest", guest, "--memory", memory, "--hz", "50", "--run", "0.3", "--json");
    assert.is(restored.code, 0);
    const result = JSON.parse(restored.lines[0]) as { type: string; firstOutput: number; last: number; diskErrors: number };
    assert.is(result.type, "restored");
    assert.is(result.firstOutput, at + 1, "the restored guest prints the counter after the saved one first");
    assert.ok(result.last > at + 1, `it ran on, to ${result.last}`);
    assert.is(result.diskErrors, 0);
  });
}

for (const [guest, memory, run, least] of [["reference", "4", "0.3", 50], ["v86", "8", "0.8", 20]] as const) {
test(`migrate to a secondary in another process: handover, and the output runs on exactly (${guest})`, async () => {
  const socket = join(dir, `sock-${guest}`);
  const shared = ["--guest", guest, "--memory", memory, "--hz", "100"];
  const [command, ...args] = selfCommand(fileURLToPath(new URL("../host/cli/main.ts", import.meta.url)), [
    "secondary", "--listen", socket, ...shared, "--json",
  ]);
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "inherit"] });
  const lines: string[] = [];
  let text = "";
  child.stdout!.on("data", (chunk: Uint8Array) => {
    text += new TextDecoder().decode(chunk);
    const parts = text.split("\n");
    text = parts.pop()!;
    lines.push(...parts);
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  await until(() => lines.some((l) => l.includes('"listening"')), 20_000);
  const migrated = await cli("migrate", "--connect", socket, ...shared, "--run", run, "--json");
  assert.is(migrated.code, 0);
  const result = JSON.parse(migrated.lines[migrated.lines.length - 1]);
  assert.is(result.type, "migrated");
  await until(() => lines.some((l) => l.includes('"takeover"')), 10_000);
  const takeover = JSON.parse(lines.find((l) => l.includes('"takeover"'))!);
  assert.is(takeover.reason, "handover");
  await new Promise((r) => setTimeout(r, 300)); // the destination runs on a while
  child.kill("SIGINT");
  await exited;
  // The outside world: both sides' outputs, each seq once. The guest ran before the migration
  // began (--run), so the sequence starts at some counter; from there, no gap and no repeat.
  const world = new Map<number, string>();
  for (const line of [...migrated.lines, ...lines]) {
    if (!line.includes('"output"')) continue;
    const o = JSON.parse(line) as { seq: number; text: string };
    assert.ok(!world.has(o.seq) || world.get(o.seq) === o.text, `seq ${o.seq} came twice with different bytes`);
    world.set(o.seq, o.text);
  }
  const seqs = [...world.keys()].sort((a, b) => a - b);
  assert.ok(seqs.every((seq, i) => seq === i + 1), "seqs 1..n");
  const log = new CounterLog();
  for (const seq of seqs) log.see(world.get(seq)!);
  const counters = log.counters;
  assert.ok(counters.length > least, `${counters.length} counters`);
  assert.ok(counters.every((c, i) => i === 0 || c === counters[i - 1] + 1), "the guest's counter with no gap and no repeat across the handover");
  assert.is(log.diskErrors, 0);
});
}

test.after(() => rmSync(dir, { recursive: true, force: true }));

test.run();
