import { spawn } from "node:child_process";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { createImage } from "../../host/disk/registry.ts";
import { DiskRecordState, recordPath, DiskRecordFile } from "../../host/replication/disk-record.ts";
import { selfCommand } from "../../host/runtime/self-command.ts";
import { CounterLog } from "../../host/cli/guests.ts";
import { qemuCheck, qemuTest } from "../support/qemu.ts";
import { until } from "../support/session.ts";
import { makeImage, tempDir } from "../replication/support.ts";

const test = suite("tandem primary --hda and secondary --hda: each side on its own image file");
const MAIN = fileURLToPath(new URL("../../host/cli/main.ts", import.meta.url));

function run(args: string[]) {
  const [command, ...rest] = selfCommand(MAIN, args);
  const child = spawn(command, rest, { stdio: ["ignore", "pipe", "pipe"] });
  const lines: string[] = [];
  const errors: string[] = [];
  let text = "";
  child.stdout!.on("data", (chunk: Uint8Array) => {
    text += new TextDecoder().decode(chunk);
    const parts = text.split("\n");
    text = parts.pop()!;
    lines.push(...parts);
  });
  child.stderr!.on("data", (chunk: Uint8Array) => errors.push(new TextDecoder().decode(chunk)));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  return { child, lines, errors, exited };
}

test("the primary killed (SIGKILL) once protected: the secondary takes over on its own image, whose guest finds every sector it wrote", async () => {
  if (!qemuTest("CLI disk replication")) return;
  const dir = tempDir();
  try {
    const size = 8 << 20;
    makeImage(join(dir, "vm.qcow2"), size, 0.6, 5);
    createImage(join(dir, "replica.qcow2"), "qcow2", { size });
    const socket = join(dir, "sock");
    const shared = ["--guest", "reference", "--memory", "4", "--json"];
    const secondary = run(["secondary", "--listen", socket, "--hda", join(dir, "replica.qcow2"), "--heartbeat", "3000", ...shared]);
    await until(() => secondary.lines.some((l) => l.includes('"listening"')), 30_000);
    const primary = run(["primary", "--connect", socket, "--hda", join(dir, "vm.qcow2"), "--interval", "20", ...shared]);
    const checkpoints = () => primary.lines.filter((l) => l.includes('"checkpoint"')).map((l) => JSON.parse(l) as { protected: boolean; diskCopy: { mode: string; total: number }[] });
    await until(() => checkpoints().some((c) => c.protected), 60_000).catch((error: Error) => {
      throw new Error(`${error.message}: primary said ${primary.errors.join("")}; secondary said ${secondary.errors.join("")} ${secondary.lines.filter((l) => !l.includes('"output"')).join(" ")}`);
    });
    const first = checkpoints()[0];
    assert.is(first.protected, false, "the first checkpoints go while the disk is being copied");
    assert.is(first.diskCopy[0].mode, "full");
    await new Promise((r) => setTimeout(r, 300));
    primary.child.kill("SIGKILL");
    await primary.exited;
    await until(() => secondary.lines.some((l) => l.includes('"takeover"')), 20_000);
    await new Promise((r) => setTimeout(r, 500)); // the guest runs on the replica, reading back what it wrote
    secondary.child.kill("SIGINT");
    assert.is(await secondary.exited, 0, secondary.errors.join(""));
    const log = new CounterLog();
    for (const line of [...primary.lines, ...secondary.lines]) {
      if (line.includes('"output"')) log.see((JSON.parse(line) as { text: string }).text);
    }
    assert.ok(log.counters.length > 50, `${log.counters.length} counters`);
    assert.is(log.diskErrors, 0, "the guest found every sector it wrote, before and after the takeover");
    const record = DiskRecordFile.open(recordPath(join(dir, "replica.qcow2")), size, { readOnly: true });
    assert.is(record.record.state, DiskRecordState.TookOver, "the replica's record says it runs as a primary now");
    record.close();
    const check = qemuCheck(join(dir, "replica.qcow2"));
    assert.is(check.status, 0, JSON.stringify(check.report));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
