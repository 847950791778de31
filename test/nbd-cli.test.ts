import { suite } from "uvu";
import * as assert from "uvu/assert";
import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import { fileURLToPath } from "node:url";
import { createImage } from "../host/disk/registry.ts";
import { runtimeName } from "../host/runtime/runtime.ts";
import { selfCommand } from "../host/runtime/self-command.ts";
import { mustRun, nbdTest, runTool } from "./support/nbd.ts";
import { qemuCheck, qemuImg, qemuIo, tempDir } from "./support/qemu.ts";
import { COPIED, CORRUPT_BIT, incompatibleFeatures, layoutOf, offsetOf, patchU64 } from "./disk/qcow2/image-layout.ts";

const test = suite("tandem serve: the NBD daemon as a process (pid file, SIGHUP checkpoint, SIGTERM, kill -9 under writes)");

const MiB = 1024 * 1024;
const MAIN = fileURLToPath(new URL("../host/cli/main.ts", import.meta.url));

/** A `tandem serve` child process and what it printed. */
interface Daemon {
  child: ChildProcess;
  output: () => string;
  exited: Promise<{ code: number | null; signal: string | null }>;
  uri: string;
}

async function waitFor(check: () => boolean, what: string, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function startServe(args: string[]): Promise<Daemon> {
  const [command, ...rest] = selfCommand(MAIN, ["serve", ...args]);
  const child = spawn(command, rest, { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout!.on("data", (chunk: Uint8Array) => (output += new TextDecoder().decode(chunk)));
  child.stderr!.on("data", (chunk: Uint8Array) => (output += new TextDecoder().decode(chunk)));
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  await waitFor(() => output.includes("listening on") || child.exitCode !== null, "tandem serve to listen");
  const uri = /listening on (\S+)/.exec(output)?.[1];
  if (uri === undefined) throw new Error(`tandem serve did not start: ${output}`);
  return { child, output: () => output, exited, uri };
}

/** Sends `signal` by pid: Deno's ChildProcess.kill ignores every call after its first. */
function signal(daemon: Daemon, name: NodeJS.Signals): void {
  process.kill(daemon.child.pid!, name);
}

/** The daemon's exit, failing after `ms` rather than hanging the suite. */
function exit(daemon: Daemon, ms = 30_000): Promise<{ code: number | null; signal: string | null }> {
  return Promise.race([daemon.exited, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`tandem serve did not exit within ${ms} ms: ${daemon.output()}`)), ms))]);
}

/** Deno's child_process reports the signal it sent even when the child handled it and exited 0. */
function assertCleanExit(result: { code: number | null; signal: string | null }, output: string): void {
  if (runtimeName() === "deno") assert.ok(result.code === 0 || result.signal === "SIGTERM", `exit ${result.code} ${result.signal}: ${output}`);
  else assert.is(result.code, 0, output);
}

test("serve --port 0 --pidfile: qemu-io writes over nbd://, SIGHUP logs a checkpoint, SIGTERM exits 0 and removes the pid file", async () => {
  if (!nbdTest("serve over TCP")) return;
  const t = tempDir("nbd-cli");
  try {
    createImage(t.path("base.qcow2"), "qcow2", { size: 8 * MiB });
    qemuIo(t.path("base.qcow2"), ["write -P 0x31 0 8M"], { format: "qcow2" });
    createImage(t.path("top.qcow2"), "qcow2", { size: 8 * MiB, backingFile: "base.qcow2", backingFormat: "qcow2" });
    const daemon = await startServe([t.path("top.qcow2"), "--port", "0", "--export", "vm1", "--pidfile", t.path("serve.pid"), "--verbose"]);
    try {
      assert.match(daemon.uri, /^nbd:\/\/127\.0\.0\.1:\d+\/vm1$/);
      assert.is(fs.readFileSync(t.path("serve.pid"), "utf8").trim(), String(daemon.child.pid));
      await mustRun("qemu-io", ["-f", "raw", "-c", "read -P 0x31 0 8M", "-c", "write -P 0x32 2M 1M", daemon.uri]);
      signal(daemon, "SIGHUP");
      await waitFor(() => daemon.output().includes("checkpoint:"), "the checkpoint log line", 10_000);
      assert.ok(daemon.child.exitCode === null, "SIGHUP does not stop the daemon");
      await mustRun("qemu-io", ["-f", "raw", "-c", "read -P 0x32 2M 1M", daemon.uri]);
      signal(daemon, "SIGTERM");
      assertCleanExit(await exit(daemon), daemon.output());
      assert.ok(daemon.output().includes("serve: stopped"), daemon.output());
      assert.not.ok(fs.existsSync(t.path("serve.pid")), "the pid file is gone");
    } finally {
      if (daemon.child.exitCode === null) daemon.child.kill("SIGKILL");
    }
    assert.is(qemuCheck(t.path("top.qcow2")).status, 0);
    qemuIo(t.path("top.qcow2"), ["read -P 0x31 0 2M", "read -P 0x32 2M 1M", "read -P 0x31 3M 5M"], { format: "qcow2" });
  } finally {
    t.remove();
  }
});

test("serve --socket --read-only: nbd+unix:// reads work, writes fail; usage errors exit 2", async () => {
  if (!nbdTest("serve read-only on a unix socket")) return;
  const t = tempDir("nbd-cli-ro");
  try {
    createImage(t.path("r.raw"), "raw", { size: MiB });
    const daemon = await startServe([t.path("r.raw"), "--socket", t.path("s.sock"), "--read-only"]);
    try {
      assert.is(daemon.uri, `nbd+unix:///?socket=${t.path("s.sock")}`);
      await mustRun("qemu-io", ["-f", "raw", "-r", "-c", "read -P 0 0 1M", daemon.uri]);
      const write = await runTool("qemu-io", ["-f", "raw", "-c", "write -P 1 0 4096", daemon.uri]);
      assert.ok(write.status !== 0 || /error|failed|denied|read-only/i.test(write.stdout + write.stderr), write.stdout + write.stderr);
      const ro = await runTool("nbdinfo", ["--is", "read-only", daemon.uri]);
      assert.is(ro.status, 0, "nbdinfo --is read-only exits 0 for a read-only export");
      signal(daemon, "SIGINT");
      assertCleanExit(await exit(daemon), daemon.output());
      assert.not.ok(fs.existsSync(t.path("s.sock")), "the socket file is removed");
    } finally {
      if (daemon.child.exitCode === null) daemon.child.kill("SIGKILL");
    }
    const [command, ...rest] = selfCommand(MAIN, ["serve", t.path("r.raw"), "--socket", t.path("x.sock"), "--port", "1"]);
    const usage = await runTool(command, rest);
    assert.is(usage.status, 2, usage.stderr);
  } finally {
    t.remove();
  }
});

test("kill -9 of tandem serve under qemu-io writes: qemu-img check of the qcow2 image passes (0, or 3 for leaks only)", async () => {
  if (!nbdTest("kill -9 under writes")) return;
  const t = tempDir("nbd-cli-kill");
  try {
    createImage(t.path("k.qcow2"), "qcow2", { size: 64 * MiB });
    const daemon = await startServe([t.path("k.qcow2"), "--socket", t.path("k.sock")]);
    let stop = false;
    let rounds = 0;
    const writer = (async () => {
      for (let i = 0; i < 200 && !stop; i++) {
        // Spread writes over fresh clusters, so the kill lands among allocations (L2 and refcount updates).
        const at = ((i * 7919) % 60) * MiB + (i % 16) * 65536;
        await runTool("qemu-io", ["-f", "raw", "-c", `write -P ${i % 250} ${at} 196608`, "-c", `write -P 1 ${(i * 13) % 60}M 4096`, daemon.uri], 10_000);
        rounds++;
      }
    })();
    await waitFor(() => rounds >= 5, "some qemu-io rounds", 60_000);
    signal(daemon, "SIGKILL");
    stop = true;
    await exit(daemon);
    await writer;
    const check = qemuCheck(t.path("k.qcow2"));
    assert.ok(check.status === 0 || check.status === 3, `qemu-img check exit ${check.status}: ${JSON.stringify(check.report)}`);
    qemuIo(t.path("k.qcow2"), ["read 0 64M"], { format: "qcow2" });
  } finally {
    t.remove();
  }
});

test("serve of an image whose L2 entry points at refcount block 0 (issue 22): the write is refused as QEMU refuses it, the image marked corrupt, and served read-only after", async () => {
  if (!nbdTest("serve refuses a write onto metadata")) return;
  const t = tempDir("nbd-cli-overlap");
  try {
    const path = t.path("o.qcow2");
    qemuImg("create", "-q", "-f", "qcow2", path, "8M");
    qemuIo(path, ["write -P 0x11 0 1M"], { format: "qcow2" });
    const layout = layoutOf(path);
    const l2 = offsetOf(layout.l1[0].value);
    patchU64(path, l2 + 3 * 8, COPIED | BigInt(offsetOf(layout.refcountTable[0].value)));
    const errorsBefore = (qemuCheck(path).report.corruptions as number | undefined) ?? 0;
    const daemon = await startServe([path, "--socket", t.path("o.sock")]);
    try {
      const write = await runTool("qemu-io", ["-f", "raw", "-c", "write -P 0x77 192k 64k", daemon.uri]);
      assert.match(write.stdout + write.stderr, /write failed: Input\/output error/, write.stdout + write.stderr);
      signal(daemon, "SIGTERM");
      await exit(daemon);
    } finally {
      if (daemon.child.exitCode === null) daemon.child.kill("SIGKILL");
    }
    assert.is(incompatibleFeatures(path) & CORRUPT_BIT, CORRUPT_BIT, "corrupt bit set");
    assert.ok(((qemuCheck(path).report.corruptions as number | undefined) ?? 0) <= errorsBefore, "no new damage");

    const again = await startServe([path, "--socket", t.path("o.sock")]);
    try {
      assert.match(again.output(), /is marked corrupt: serving it read-only until it is repaired/, again.output());
      assert.match(again.output(), /listening on .*read-only/, again.output());
      await mustRun("qemu-io", ["-f", "raw", "-r", "-c", "read -P 0x11 0 64k", again.uri]);
      signal(again, "SIGTERM");
      await exit(again);
    } finally {
      if (again.child.exitCode === null) again.child.kill("SIGKILL");
    }
  } finally {
    t.remove();
  }
});

test.run();
