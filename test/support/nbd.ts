/**
 * Real NBD clients (qemu-img, qemu-io from qemu-utils; nbdinfo from libnbd-bin) run
 * asynchronously, so a server in the test's own process keeps serving; and a raw-socket client
 * for what real clients never send.
 */

import { execFile, spawnSync } from "node:child_process";
import * as net from "node:net";

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
