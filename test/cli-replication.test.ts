import { suite } from "uvu";
import * as assert from "uvu/assert";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { runCli } from "../host/cli/commands.ts";
import { selfCommand } from "../host/runtime/self-command.ts";
import { until } from "./support/session.ts";

const test = suite("tandem save, restore and migrate");
const dir = mkdtempSync(join(tmpdir(), "tandem-cli-"));

async function cli(...args: string[]): Promise<{ code: number; lines: string[] }> {
  const lines: string[] = [];
  const code = await runCli(args, { out: (l) => lines.push(l), err: () => {} });
  return { code, lines };
}

test("save after running, restore, and the counter goes on from where it was saved", async () => {
  const file = join(dir, "guest");
  const saved = await cli("save", file, "--memory", "2", "--run", "0.2", "--json");
  assert.is(saved.code, 0);
  const at = JSON.parse(saved.lines[0]).counter as number;
  assert.ok(at > 0);
  const restored = await cli("restore", file, "--memory", "2", "--run", "0.1", "--json");
  assert.is(restored.code, 0);
  assert.equal(JSON.parse(restored.lines[0]), { type: "restored", counter: at, firstOutput: at + 1, diskErrors: 0 });
});

test("migrate to a secondary in another process: handover, and the output runs on exactly", async () => {
  const socket = join(dir, "sock");
  const [command, ...args] = selfCommand(fileURLToPath(new URL("../host/cli/main.ts", import.meta.url)), [
    "secondary", "--listen", socket, "--memory", "4", "--json",
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
  const migrated = await cli("migrate", "--connect", socket, "--memory", "4", "--run", "0.3", "--json");
  assert.is(migrated.code, 0);
  const result = JSON.parse(migrated.lines[migrated.lines.length - 1]);
  assert.is(result.type, "migrated");
  await until(() => lines.some((l) => l.includes('"takeover"')), 10_000);
  const takeover = JSON.parse(lines.find((l) => l.includes('"takeover"'))!);
  assert.is(takeover.reason, "handover");
  await new Promise((r) => setTimeout(r, 200)); // the destination runs on a while
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
  assert.ok(seqs.length > 50, `${seqs.length} outputs`);
  const counters = seqs.map((seq) => Number(/counter (\d+)/.exec(world.get(seq)!)?.[1]));
  assert.ok(seqs.every((seq, i) => seq === i + 1), "seqs 1..n");
  assert.ok(counters.every((c, i) => i === 0 || c === counters[i - 1] + 1), "the guest's counter with no gap and no repeat across the handover");
});

test.after(() => rmSync(dir, { recursive: true, force: true }));

test.run();
