import { suite } from "uvu";
import * as assert from "uvu/assert";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { runtimeName } from "../host/runtime/runtime.ts";
import { selfCommand } from "../host/runtime/self-command.ts";
import { XenStoreClient } from "../host/xen/xenstore/client.ts";
import { until } from "./support/session.ts";

const test = suite("tandem xenstored with Debian's xenstore-utils (xenstore-read, -write, -ls, -list, -rm, -exists, -chmod, -watch)");

const XENSTORE_READ = "/usr/bin/xenstore-read";
const available = fs.existsSync(XENSTORE_READ);
const required = process.env.TANDEM_REQUIRE_XEN === "1";
const dir = fs.mkdtempSync(join(tmpdir(), "tandem-xenstored-"));
const socketPath = join(dir, "xenstored.sock");

let daemon: ChildProcess | undefined;
let daemonOutput = "";
let exited: Promise<{ code: number | null; signal: string | null }> = Promise.resolve({ code: null, signal: null });

/** Runs one xenstore-utils tool against the daemon; resolves with its exit code and output. */
function xs(tool: string, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(`/usr/bin/xenstore-${tool}`, args, { env: { ...process.env, XENSTORED_PATH: socketPath }, timeout: 10_000 }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === "number" ? error.code : -1;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

/** Whether to run: xenstore-utils present, or a failure if CI requires them. */
function xenTest(name: string): boolean {
  if (available) return true;
  if (required) assert.unreachable(`${XENSTORE_READ} is missing but TANDEM_REQUIRE_XEN=1 (install Debian's xenstore-utils)`);
  console.log(`  skip: ${name} (no ${XENSTORE_READ}; install xenstore-utils)`);
  return false;
}

test.before(async () => {
  if (!available) return;
  const [command, ...args] = selfCommand(fileURLToPath(new URL("../host/cli/main.ts", import.meta.url)), ["xenstored", "--socket", socketPath]);
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] });
  daemon = child;
  exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  child.stdout!.on("data", (chunk: Uint8Array) => (daemonOutput += new TextDecoder().decode(chunk)));
  child.stderr!.on("data", (chunk: Uint8Array) => (daemonOutput += new TextDecoder().decode(chunk)));
  await until(() => daemonOutput.includes("listening on"), 30_000);
});

test.after(() => {
  if (daemon !== undefined && daemon.exitCode === null) daemon.kill("SIGKILL");
  fs.rmSync(dir, { recursive: true, force: true });
});

test("xenstore-write then xenstore-read, -exists, -list and -ls show the tree", async () => {
  if (!xenTest("write/read/ls")) return;
  assert.ok(daemonOutput.includes(socketPath), daemonOutput);
  const written = await xs("write", "/local/domain/0/name", "Domain-0", "/vm/1/name", "guest one", "/vm/1/device/vbd/51712/state", "4");
  assert.is(written.code, 0, written.stderr);
  const read = await xs("read", "/vm/1/name", "/local/domain/0/name");
  assert.equal([read.code, read.stdout], [0, "guest one\nDomain-0\n"]);
  assert.is((await xs("read", "/vm/missing")).code, 1);
  assert.is((await xs("exists", "/vm/1/device")).code, 0);
  assert.is((await xs("exists", "/vm/2")).code, 1);
  const list = await xs("list", "/vm/1");
  assert.equal([list.code, list.stdout], [0, "name\ndevice\n"], "children in creation order");
  const ls = await xs("ls", "/vm");
  assert.is(ls.code, 0, ls.stderr);
  assert.is(ls.stdout, ['1 = ""', ' name = "guest one"', ' device = ""', '  vbd = ""', '   51712 = ""', '    state = "4"', ""].join("\n"));
  const full = await xs("ls", "-f", "/vm/1/device");
  assert.ok(full.stdout.includes('/vm/1/device/vbd/51712/state = "4"'), full.stdout);
});

test("xenstore-rm removes a subtree; xenstore-chmod sets permissions that xenstore-ls -p and GET_PERMS show", async () => {
  if (!xenTest("rm/chmod")) return;
  await xs("write", "/t/keep", "k", "/t/gone/deep/er", "x");
  assert.is((await xs("rm", "/t/gone")).code, 0);
  assert.is((await xs("exists", "/t/gone/deep/er")).code, 1);
  assert.is((await xs("list", "/t")).stdout, "keep\n");
  const chmod = await xs("chmod", "/t/keep", "n0", "r5", "b7");
  assert.is(chmod.code, 0, chmod.stderr);
  const client = await XenStoreClient.connect(socketPath);
  try {
    assert.equal(await client.getPerms("/t/keep"), [{ domid: 0, access: "n" }, { domid: 5, access: "r" }, { domid: 7, access: "b" }]);
  } finally {
    client.close();
  }
  const ls = await xs("ls", "-p", "/t");
  assert.match(ls.stdout, /^keep = "k" .*\(n0,r5,b7\)\n$/);
  assert.is((await xs("chmod", "/t/keep", "q1")).code !== 0, true, "a bad permission is refused");
});

test("xenstore-list of a node with more children than one reply holds (DIRECTORY_PART)", async () => {
  if (!xenTest("list many")) return;
  const pairs: string[] = [];
  for (let i = 0; i < 250; i++) pairs.push(`/many/child-with-a-long-name-${i}`, String(i));
  assert.is((await xs("write", ...pairs)).code, 0);
  const list = await xs("list", "/many");
  const names = list.stdout.trim().split("\n");
  assert.is(names.length, 250);
  assert.is(names[249], "child-with-a-long-name-249");
});

test("xenstore-watch receives the registration event and a change", async () => {
  if (!xenTest("watch")) return;
  await xs("write", "/watched/x", "0");
  const watcher = spawn("/usr/bin/xenstore-watch", ["-n", "2", "/watched"], { env: { ...process.env, XENSTORED_PATH: socketPath }, stdio: ["ignore", "pipe", "inherit"] });
  let output = "";
  watcher.stdout!.on("data", (chunk: Uint8Array) => (output += new TextDecoder().decode(chunk)));
  const exited = new Promise<number | null>((resolve) => watcher.once("exit", (code) => resolve(code)));
  try {
    await until(() => output.includes("/watched\n"), 10_000);
    assert.is((await xs("write", "/watched/x/y", "1")).code, 0);
    assert.is(await exited, 0, "it exits after its two events");
    assert.is(output, "/watched\n/watched/x/y\n");
  } finally {
    if (watcher.exitCode === null) watcher.kill("SIGKILL");
  }
});

test("the daemon survives a client sending garbage and one claiming a huge payload", async () => {
  if (!xenTest("garbage")) return;
  const closed = await new Promise<boolean>((resolve) => {
    const socket = net.connect({ path: socketPath });
    socket.on("error", () => {});
    socket.on("data", () => {});
    socket.once("connect", () => socket.write(new TextEncoder().encode("GET / HTTP/1.1\r\nHost: xenstore\r\n\r\n" + "\xff".repeat(100))));
    socket.once("close", () => resolve(true));
    setTimeout(() => {
      socket.destroy();
      resolve(false);
    }, 5000);
  });
  assert.ok(closed, "the garbage's header claims over 4096 bytes: the server hangs up");
  const read = await xs("read", "/watched/x/y");
  assert.equal([read.code, read.stdout], [0, "1\n"]);
});

test("SIGTERM stops the daemon cleanly and removes its socket", async () => {
  if (!xenTest("stop")) return;
  daemon!.kill("SIGTERM");
  const { code, signal } = await exited;
  // Deno's child_process reports the signal it sent even when the child handled it and exited 0.
  if (runtimeName() === "deno") assert.ok(code === 0 || signal === "SIGTERM", `exit ${code} ${signal}`);
  else assert.is(code, 0, daemonOutput);
  assert.ok(daemonOutput.includes("xenstored: stopped"), "it stopped through its SIGTERM handler, not by dying");
  assert.not.ok(fs.existsSync(socketPath));
  assert.is((await xs("read", "/vm/1/name")).code, 1, "nothing answers any more");
});

test.run();
