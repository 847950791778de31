/**
 * passt, the unprivileged user-mode network of podman and libvirt, as the network a protected
 * guest lives on. It runs as its own process, standing for the network that outlives either host
 * of a pair: it gives the guest DHCP and DNS, forwards host ports into it, and speaks QEMU's
 * stream framing (frame-stream.ts) on a Unix socket to one client at a time, accepting the next
 * once the previous one is gone, which is how a standby steps in after a failover.
 */

import { spawn, type ChildProcess } from "node:child_process";
import { chmodSync, closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ErrorCode, TandemError } from "../errors.ts";

/** Options of {@link startPasst}. */
export interface PasstOptions {
  /**
   * TCP ports forwarded from the host into the guest, in passt's `-t` syntax: "8080:80" (host
   * 8080 to guest 80), "127.0.0.1/8080:80" (bound on loopback only). Default: none.
   */
  tcpForwards?: readonly string[];
  /** The MTU offered by DHCP. Default 1500, what v86's NE2000 can carry. */
  mtu?: number;
  /** More passt arguments, as given (e.g. ["-D", "192.0.2.1"]). */
  extraArgs?: readonly string[];
  /** The passt executable. Default "passt" on the PATH. */
  command?: string;
  /** How long to wait for its socket. Default 10 s. */
  startTimeoutMs?: number;
  /**
   * Where passt listens. Default: passt.socket in a new private folder. A stale socket file there
   * is replaced; one that answers is refused (another passt, or another tandem, is using it).
   */
  socketPath?: string;
  /**
   * Let passt outlive this process: started in its own session, not waited for, its messages
   * written to a file beside the socket (SOCKET.log, or passt.log in the private folder) rather
   * than to a pipe that this process's death would break. A pair's primary starts passt this way, so that a standby can take over the network
   * (and its open TCP connections) after the primary is killed.
   */
  outliveCaller?: boolean;
}

/** A running passt. */
export interface Passt {
  /** The Unix socket its client (the running side of the pair) connects to. */
  readonly socketPath: string;
  /** Its process id. */
  readonly pid: number;
  /** Stops it and removes its socket. */
  stop(): Promise<void>;
}

const DEFAULT_MTU = 1500;
const DEFAULT_START_TIMEOUT_MS = 10_000;
const POLL_MS = 25;

/**
 * Starts passt in the foreground on a socket in a new private folder (or at `socketPath`).
 * Started as root, passt drops to `nobody`, so the folder is made writable for it. Rejects E_NET_UNAVAILABLE, with
 * passt's own words, if it cannot be run or does not come up.
 */
export async function startPasst(options: PasstOptions = {}): Promise<Passt> {
  const mtu = options.mtu ?? DEFAULT_MTU;
  if (!Number.isInteger(mtu) || mtu < 576 || mtu > 65520) {
    throw new TandemError(ErrorCode.BadArgument, `passt MTU ${mtu}: expected 576 to 65520`);
  }
  if (options.socketPath !== undefined && existsSync(options.socketPath)) {
    if (await answers(options.socketPath)) {
      throw new TandemError(ErrorCode.NetUnavailable, `cannot start passt on ${options.socketPath}: something already listens there (another passt?); give another socket path`);
    }
    rmSync(options.socketPath, { force: true });
  }
  // A private folder only when no socket path is given: one that outlives us is not left behind.
  const dir = options.socketPath === undefined ? mkdtempSync(join(tmpdir(), "tandem-passt-")) : undefined;
  if (dir) chmodSync(dir, 0o777); // passt started as root runs as nobody, and binds its socket here
  const socketPath = options.socketPath ?? join(dir!, "passt.socket");
  const args = ["-f", "-e", "-q", "-s", socketPath, "-m", String(mtu)];
  for (const spec of options.tcpForwards ?? []) args.push("-t", spec);
  args.push(...(options.extraArgs ?? []));
  const command = options.command ?? "passt";
  const logPath = dir ? join(dir, "passt.log") : `${socketPath}.log`;
  const logFd = options.outliveCaller ? openSync(logPath, "w") : undefined;
  const child = spawn(command, args, { stdio: ["ignore", "ignore", logFd ?? "pipe"], detached: options.outliveCaller === true });
  if (logFd !== undefined) {
    closeSync(logFd);
    child.unref();
  }
  let piped = "";
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (text: string) => (piped = (piped + text).slice(-4000)));
  // Without a syslog passt says so for every line it logs; those lines are noise here.
  const said = () => (logFd !== undefined ? readLog(logPath) : piped).split("\n").filter((l) => !l.startsWith("Failed to send")).join("\n").trim();
  const exited = new Promise<string>((resolve) => {
    child.once("error", (error) => resolve(`${error.message}${(error as NodeJS.ErrnoException).code === "ENOENT" ? ` (install Debian's package 'passt')` : ""}`));
    child.once("exit", (code, signal) => resolve(`exited ${signal ?? code}`));
  });
  const cleanup = () => {
    if (dir) rmSync(dir, { recursive: true, force: true });
    else rmSync(socketPath, { force: true });
    if (logFd !== undefined) rmSync(logPath, { force: true });
  };
  const deadline = performance.now() + (options.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS);
  let early: string | undefined;
  void exited.then((why) => (early = why));
  while (!(await answers(socketPath))) {
    if (early !== undefined || performance.now() > deadline) {
      child.kill("SIGKILL");
      cleanup();
      const why = early ?? `its socket ${socketPath} did not answer in time`;
      throw new TandemError(ErrorCode.NetUnavailable, `cannot start passt (${command} ${args.join(" ")}): ${why}${said() ? `; it said: ${said()}` : ""}`);
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  return {
    socketPath,
    pid: child.pid!,
    stop: async () => {
      await stopChild(child, exited);
      cleanup();
    },
  };
}

/**
 * Whether something accepts on `path`. A probe connection is a client to passt, which it drops at
 * once, so passt is ready for the real one right after.
 */
function answers(path: string): Promise<boolean> {
  if (!existsSync(path)) return Promise.resolve(false);
  return new Promise((resolve) => {
    const probe = net.connect({ path });
    probe.once("connect", () => {
      probe.destroy();
      resolve(true);
    });
    probe.once("error", () => resolve(false));
  });
}

/** The end of passt's log file (it may be gone). */
function readLog(path: string): string {
  try {
    return readFileSync(path, "utf8").slice(-4000);
  } catch {
    return "";
  }
}

async function stopChild(child: ChildProcess, exited: Promise<string>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 2000);
  await exited;
  clearTimeout(timer);
}
