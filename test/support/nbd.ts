/**
 * Real NBD clients (qemu-img, qemu-io from qemu-utils; nbdinfo from libnbd-bin) run
 * asynchronously, so a server in the test's own process keeps serving; and a raw-socket client
 * for what real clients never send.
 */

import { execFile, spawnSync } from "node:child_process";
import * as net from "node:net";
import * as assert from "uvu/assert";
import {
  IHAVEOPT,
  NBDMAGIC,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_OPT_GO,
  NBD_REP_ACK,
  NBD_REP_INFO,
  NBD_REP_MAGIC,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
} from "../../host/nbd/protocol.ts";
import { concat } from "./bytes.ts";

/** The tools the NBD tests drive. */
const TOOLS = ["qemu-img", "qemu-io", "nbdinfo"] as const;
let available: boolean | undefined;

/**
 * Whether an NBD client test may run: true if qemu-img, qemu-io and nbdinfo run here; false
 * (with a notice) if not; throws if missing while TANDEM_REQUIRE_NBD=1 (CI).
 */
export function nbdTest(name: string): boolean {
  available ??= TOOLS.every((tool) => spawnSync(tool, ["--version"], { encoding: "utf8" }).status === 0);
  if (available) return true;
  if (process.env.TANDEM_REQUIRE_NBD === "1") {
    throw new Error(`${name}: ${TOOLS.join("/")} not all found, and TANDEM_REQUIRE_NBD=1: install Debian's qemu-utils and libnbd-bin`);
  }
  console.log(`  (skipped ${name}: ${TOOLS.join("/")} not installed; install qemu-utils and libnbd-bin to run it)`);
  return false;
}

/** How a client exited and what it printed. */
export interface ToolResult {
  status: number;
  stdout: string;
  stderr: string;
}

/** Runs `tool` without blocking the event loop; never rejects on a non-zero exit. */
export function runTool(tool: string, args: readonly string[], timeoutMs = 60_000): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    execFile(tool, [...args], { encoding: "utf8", timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error !== null && typeof error.code !== "number") return reject(error);
      resolve({ status: error === null ? 0 : (error.code as number), stdout, stderr });
    });
  });
}

/** Runs `tool` and fails with its output unless it exits 0 without reporting an error. */
export async function mustRun(tool: string, args: readonly string[]): Promise<string> {
  const result = await runTool(tool, args);
  if (result.status !== 0 || (tool === "qemu-io" && /error|failed/i.test(result.stdout + result.stderr))) {
    throw new Error(`${tool} ${args.join(" ")} exited ${result.status}: ${result.stderr || result.stdout}`);
  }
  return result.stdout;
}

/** A client on a raw socket that reads exact byte counts, for hand-built protocol messages. */
export class RawClient {
  readonly socket: net.Socket;
  #buffered = new Uint8Array(0);
  #waiter: (() => void) | null = null;
  #ended = false;
  /** Settles when the server has closed the connection. */
  readonly closed: Promise<void>;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on("data", (chunk: Uint8Array) => {
      const next = new Uint8Array(this.#buffered.length + chunk.length);
      next.set(this.#buffered);
      next.set(chunk, this.#buffered.length);
      this.#buffered = next;
      this.#waiter?.();
    });
    socket.on("error", () => {});
    this.closed = new Promise((resolve) =>
      socket.once("close", () => {
        this.#ended = true;
        this.#waiter?.();
        resolve();
      }),
    );
  }

  /** Connects to a TCP port on 127.0.0.1 or a Unix socket path. */
  static connect(where: { port: number } | { path: string }): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = "path" in where ? net.connect({ path: where.path }) : net.connect({ port: where.port, host: "127.0.0.1" });
      socket.once("error", reject);
      socket.once("connect", () => resolve(new RawClient(socket)));
    });
  }

  /** Exactly `count` bytes, or null if the connection closes first; fails after `ms`. */
  async read(count: number, ms = 5000): Promise<Uint8Array | null> {
    const deadline = Date.now() + ms;
    while (this.#buffered.length < count) {
      if (this.#ended) return null;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${count} bytes (have ${this.#buffered.length})`);
      await new Promise<void>((resolve) => {
        this.#waiter = resolve;
        setTimeout(resolve, 50);
      });
      this.#waiter = null;
    }
    const out = this.#buffered.slice(0, count);
    this.#buffered = this.#buffered.slice(count);
    return out;
  }

  write(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

// --- hand-built protocol messages, for raw clients -----------------------------------------

/** A big-endian u32, as NBD sends every integer. */
export function u32(value: number): Uint8Array {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, value);
  return out;
}
/** A client option: IHAVEOPT, the option code and its data. */
export function option(code: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const header = new Uint8Array(16);
  const view = new DataView(header.buffer);
  view.setBigUint64(0, IHAVEOPT);
  view.setUint32(8, code);
  view.setUint32(12, data.length);
  return concat([header, data]);
}
/** A transmission request header (28 bytes). */
export function request(type: number, cookie: number, offset: number, length: number, flags = 0): Uint8Array {
  const out = new Uint8Array(28);
  const view = new DataView(out.buffer);
  view.setUint32(0, NBD_REQUEST_MAGIC);
  view.setUint16(4, flags);
  view.setUint16(6, type);
  view.setBigUint64(8, BigInt(cookie));
  view.setBigUint64(16, BigInt(offset));
  view.setUint32(24, length);
  return out;
}

/** Reads one option reply: its type and data. */
export async function optionReply(client: RawClient): Promise<{ option: number; type: number; data: Uint8Array }> {
  const header = (await client.read(20))!;
  const view = new DataView(header.buffer);
  assert.is(view.getBigUint64(0), NBD_REP_MAGIC);
  const data = (await client.read(view.getUint32(16)))!;
  return { option: view.getUint32(8), type: view.getUint32(12), data };
}

/** Greeting, client flags, then NBD_OPT_GO for `name` without structured replies; the transmission flags. */
export async function handshake(client: RawClient, name: string): Promise<number> {
  const greeting = (await client.read(18))!;
  const view = new DataView(greeting.buffer);
  assert.is(view.getBigUint64(0), NBDMAGIC);
  assert.is(view.getBigUint64(8), IHAVEOPT);
  client.write(u32(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES));
  const nameBytes = new TextEncoder().encode(name);
  client.write(option(NBD_OPT_GO, concat([u32(nameBytes.length), nameBytes, new Uint8Array(2)])));
  let flags = -1;
  for (let i = 0; i < 8; i++) {
    const reply = await optionReply(client);
    if (reply.type === NBD_REP_ACK) return flags;
    assert.is(reply.type, NBD_REP_INFO);
    const info = new DataView(reply.data.buffer);
    if (info.getUint16(0) === 0) flags = info.getUint16(10);
  }
  throw new Error("no NBD_REP_ACK after NBD_OPT_GO");
}

/** Reads a simple reply: its error and cookie, and `dataBytes` of data after a success. */
export async function simpleReply(client: RawClient, dataBytes = 0): Promise<{ error: number; cookie: number; data: Uint8Array }> {
  const header = await client.read(16);
  assert.ok(header !== null, "the server closed the connection instead of replying");
  const view = new DataView(header.buffer);
  assert.is(view.getUint32(0), NBD_SIMPLE_REPLY_MAGIC);
  const error = view.getUint32(4);
  const data = error === 0 && dataBytes > 0 ? (await client.read(dataBytes))! : new Uint8Array(0);
  return { error, cookie: Number(view.getBigUint64(8)), data };
}
