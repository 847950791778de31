import { suite } from "uvu";
import * as assert from "uvu/assert";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { runtimeName } from "../../host/runtime/runtime.ts";
import { hasStackTrace, startTandem, type TandemProcess } from "../support/tandem-process.ts";

const test = suite("tandem's long-running commands: a log line per event, and a clean stop on SIGINT and SIGTERM");

const dir = mkdtempSync(join(tmpdir(), "tandem-lifecycle-"));
const GUEST = ["--guest", "reference", "--memory", "4"];
/** A log line: an ISO timestamp, the command, the event. */
const logLine = (command: string, event: string) => new RegExp(`^\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z ${command}: ${event}`, "m");

/** It exited 0 by itself after `signal` (Deno's child_process reports the signal it sent even when the child handled it and exited 0). */
async function stoppedCleanly(p: TandemProcess, signal: NodeJS.Signals, what: string): Promise<void> {
  const { code, signal: by } = await Promise.race([
    p.exited,
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${what} did not stop within 20 s of ${signal}: ${p.stderr()}`)), 20_000)),
  ]);
  if (runtimeName() === "deno") assert.ok(code === 0 || by === signal, `${what}: exit ${code} ${by}: ${p.stderr()}`);
  else assert.is(code, 0, `${what}: ${p.stderr()}`);
  assert.not.ok(hasStackTrace(p.stderr()), p.stderr());
}

test("the README's service command (node dist/cli/main.js serve) stops on SIGTERM to its own PID", async () => {
  const main = fileURLToPath(new URL("../../dist/cli/main.js", import.meta.url));
  assert.ok(existsSync(main), "dist/ is built (npm run build; npm ci does it)");
  const image = join(dir, "served.raw");
  writeFileSync(image, new Uint8Array(1 << 20));
  const socket = join(dir, "served.sock");
  // Exactly as README.md shows it: node runs the bin itself, no launcher in between.
  const child = spawn("node", [main, "serve", image, "--socket", socket], { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout!.on("data", (chunk: Uint8Array) => (output += new TextDecoder().decode(chunk)));
  child.stderr!.on("data", (chunk: Uint8Array) => (output += new TextDecoder().decode(chunk)));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const deadline = performance.now() + 30_000;
  while (!output.includes("listening") && performance.now() < deadline && child.exitCode === null) await new Promise((r) => setTimeout(r, 20));
  assert.ok(existsSync(socket), output);
  process.kill(child.pid!, "SIGTERM");
  assert.is(await exited, 0, output);
  assert.match(output, logLine("serve", "stopping: SIGTERM"));
  assert.match(output, logLine("serve", "stopped"));
  assert.not.ok(existsSync(socket), "the socket file is removed");
});

test("migrate stops on SIGINT while its guest runs", async () => {
  const migrate = startTandem(["migrate", "--connect", join(dir, "nobody.sock"), "--run", "600", ...GUEST]);
  // Its handlers are in place once the guest is built; until then SIGINT's default would end it too.
  await new Promise((r) => setTimeout(r, 4000));
  migrate.signal("SIGINT");
  await stoppedCleanly(migrate, "SIGINT", "migrate");

});

test.after(() => rmSync(dir, { recursive: true, force: true }));

test.run();
