/**
 * `tandem primary` and `tandem secondary`: continuous replication of the built-in reference
 * machine between two processes. With --json each prints one JSON object per line (outputs,
 * checkpoints, takeover) for a supervising program such as `tandem demo`; otherwise the guest's
 * serial output goes to stdout and a status line to a terminal's stderr.
 */

import { parseArgs } from "node:util";
import { ErrorCode, TandemError } from "../errors.ts";
import { ReferenceMachine } from "../machine/reference-machine.ts";
import { stateDigest } from "../machine/state-digest.ts";
import { connect, listen, type SocketAddress, type SocketTransport } from "../protocol/socket-transport.ts";
import { migrate } from "../replication/migrate.ts";
import { replicate, type ReleasedOutput } from "../replication/primary.ts";
import { restore, save } from "../replication/save-restore.ts";
import { standby } from "../replication/secondary.ts";
import type { Output } from "./commands.ts";

/** Options both sides share: both machines must be configured alike. */
const MACHINE_OPTIONS = {
  memory: { type: "string", default: "32" },
  dirty: { type: "string", default: "0.01" },
  json: { type: "boolean", default: false },
} as const;

/** "PORT", "HOST:PORT" or a socket path (anything with a slash). */
export function parseAddress(text: string): SocketAddress {
  if (text.includes("/")) return { path: text };
  const [host, port] = text.includes(":") ? text.split(":") : ["127.0.0.1", text];
  const n = Number(port);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new TandemError(ErrorCode.BadArgument, `'${text}' is not a port, host:port or socket path`);
  return { host, port: n };
}

/** The reference machine both sides run, from the shared options. */
export function machineFrom(values: { memory: string; dirty: string }): ReferenceMachine {
  const mib = Number(values.memory);
  const dirty = Number(values.dirty);
  if (!Number.isInteger(mib) || mib < 1 || mib > 4096) throw new TandemError(ErrorCode.BadArgument, `--memory ${values.memory}: MiB from 1 to 4096`);
  if (!(dirty >= 0 && dirty <= 1)) throw new TandemError(ErrorCode.BadArgument, `--dirty ${values.dirty}: a fraction of pages per step, 0 to 1`);
  const pages = (mib << 20) / 4096;
  // One step per millisecond; --dirty is the fraction of pages a step writes.
  return new ReferenceMachine({ memoryBytes: mib << 20, dirtyPages: Math.max(1, Math.round(pages * dirty)), tickMs: 1 });
}

/** A status line on a terminal's stderr (nothing otherwise), redrawn in place. */
function statusLine(): (line: string) => void {
  const tty = process.stderr.isTTY === true;
  return (line) => {
    if (tty) process.stderr.write(`\r\x1b[K${line}`);
  };
}

/** Seconds of running the guest before acting on it (--run S). */
function runFor(machine: ReferenceMachine, seconds: string): Promise<void> {
  const ms = Number(seconds) * 1000;
  if (!(ms >= 0)) throw new TandemError(ErrorCode.BadArgument, `--run ${seconds}: seconds, 0 or more`);
  machine.resume();
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function printer(io: Output, json: boolean) {
  return (o: ReleasedOutput) => {
    const text = new TextDecoder().decode(o.data);
    io.out(json ? JSON.stringify({ type: "output", seq: o.seq, channel: o.channel, text }) : text.replace(/\n$/, ""));
  };
}

/** Runs until interrupted (SIGINT/SIGTERM) or the other side is lost. */
export async function primaryCommand(args: readonly string[], io: Output): Promise<number> {
  const { values } = parseArgs({
    args: [...args],
    options: {
      ...MACHINE_OPTIONS, connect: { type: "string" }, interval: { type: "string", default: "25" }, compress: { type: "boolean", default: false },
      digests: { type: "boolean", default: false },
    },
  });
  if (!values.connect) throw new TandemError(ErrorCode.BadArgument, "primary needs --connect PORT|HOST:PORT|PATH (where `tandem secondary --listen` runs)");
  const machine = machineFrom(values);
  const transport = await connect(parseAddress(values.connect));
  const controller = new AbortController();
  const stop = () => controller.abort("interrupted");
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  const status = statusLine();
  const window: { at: number; bytes: number }[] = [];
  const op = replicate(machine, transport, {
    intervalMs: Number(values.interval),
    compression: values.compress,
    release: printer(io, values.json),
    // For a supervisor that checks a standby byte for byte: the state at each checkpoint, hashed.
    onSuspended: values.digests ? (checkpoint) => io.out(JSON.stringify({ type: "suspended", checkpoint, digest: stateDigest(machine) })) : undefined,
    onCommitted: (s) => {
      if (values.json) io.out(JSON.stringify({ type: "checkpoint", ...s }));
      const now = performance.now();
      window.push({ at: now, bytes: s.bytes });
      while (window.length > 1 && now - window[0].at > 1000) window.shift();
      const seconds = Math.max((now - window[0].at) / 1000, 0.001);
      status(`checkpoint ${s.checkpoint}: ${(window.length / seconds).toFixed(0)}/s, pause ${s.pauseMs.toFixed(2)} ms, ${s.pages} dirty pages, ` +
        `${(window.reduce((n, w) => n + w.bytes, 0) / seconds / 1e6).toFixed(1)} MB/s, ${s.heldOutputBytes} B output held`);
    },
    signal: controller.signal,
  });
  try {
    await op.promise;
    return 0;
  } catch (error) {
    if (error instanceof TandemError && error.code === ErrorCode.Aborted) return 0;
    throw error;
  } finally {
    machine.pause();
  }
}

/** Accepts one primary, stands by, and after a takeover runs the machine until interrupted. */
export async function secondaryCommand(args: readonly string[], io: Output): Promise<number> {
  const { values } = parseArgs({ args: [...args], options: { ...MACHINE_OPTIONS, listen: { type: "string" }, heartbeat: { type: "string", default: "500" } } });
  if (!values.listen) throw new TandemError(ErrorCode.BadArgument, "secondary needs --listen PORT|HOST:PORT|PATH");
  const machine = machineFrom(values);
  let accept!: (t: SocketTransport) => void;
  const accepted = new Promise<SocketTransport>((resolve) => (accept = resolve));
  const server = await listen(parseAddress(values.listen), (t) => accept(t));
  if (values.json) io.out(JSON.stringify({ type: "listening", address: server.address }));
  const transport = await accepted;
  void server.close(); // stop listening; its promise settles only when this connection ends
  const status = statusLine();
  const op = standby(machine, transport, { heartbeatTimeoutMs: Number(values.heartbeat), release: printer(io, values.json) });
  op.onProgress((p) => status(`standing by: checkpoint ${p.checkpoints}, ${(p.bytes / 1e6).toFixed(1)} MB received`));
  const result = await op.promise;
  status("");
  if (values.json) io.out(JSON.stringify({ type: result.outcome, ...result }));
  if (result.outcome !== "takeover") return 0;
  await new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  machine.pause();
  return 0;
}

/** Runs the guest for --run seconds, then migrates it to `tandem secondary --listen` at --connect. */
export async function migrateCommand(args: readonly string[], io: Output): Promise<number> {
  const { values } = parseArgs({
    args: [...args],
    options: { ...MACHINE_OPTIONS, connect: { type: "string" }, run: { type: "string", default: "1" }, "max-downtime": { type: "string", default: "30" } },
  });
  if (!values.connect) throw new TandemError(ErrorCode.BadArgument, "migrate needs --connect PORT|HOST:PORT|PATH (where `tandem secondary --listen` runs)");
  const machine = machineFrom(values);
  await runFor(machine, values.run);
  const status = statusLine();
  const op = migrate(machine, await connect(parseAddress(values.connect)), { maxDowntimeMs: Number(values["max-downtime"]), release: printer(io, values.json) });
  op.onProgress((p) => status(`${p.phase}: round ${p.iterations}, ${p.pages} pages, ${(p.bytes / 1e6).toFixed(1)} MB`));
  const result = await op.promise;
  status("");
  io.out(values.json ? JSON.stringify({ type: "migrated", ...result })
    : `migrated in ${result.totalMs.toFixed(0)} ms (${result.iterations} rounds, ${result.converged ? "converged" : "stopped at the limit"}), downtime ${result.downtimeMs.toFixed(1)} ms`);
  return 0;
}

/** Runs the guest for --run seconds, then saves it to FILE. */
export async function saveCommand(args: readonly string[], io: Output): Promise<number> {
  const { values, positionals } = parseArgs({ args: [...args], allowPositionals: true, options: { ...MACHINE_OPTIONS, run: { type: "string", default: "1" } } });
  if (positionals.length !== 1) throw new TandemError(ErrorCode.BadArgument, "save needs one FILE");
  const machine = machineFrom(values);
  await runFor(machine, values.run);
  const result = await save(machine, positionals[0], { stop: true }).promise;
  io.out(values.json ? JSON.stringify({ type: "saved", counter: machine.counter, ...result })
    : `saved at counter ${machine.counter}: ${result.bytes} bytes (${result.zeroPages} of ${result.pages} pages zero), paused ${result.pauseMs.toFixed(1)} ms`);
  return 0;
}

/** Restores the guest from FILE and runs it for --run seconds, printing its output. */
export async function restoreCommand(args: readonly string[], io: Output): Promise<number> {
  const { values, positionals } = parseArgs({ args: [...args], allowPositionals: true, options: { ...MACHINE_OPTIONS, run: { type: "string", default: "1" } } });
  if (positionals.length !== 1) throw new TandemError(ErrorCode.BadArgument, "restore needs one FILE");
  const machine = machineFrom(values);
  let first: number | undefined;
  machine.onOutput((o) => {
    const text = new TextDecoder().decode(o.data);
    first ??= Number(/counter (\d+)/.exec(text)?.[1]);
    if (!values.json) io.out(text.replace(/\n$/, ""));
  });
  const restored = machine.counter;
  await restore(machine, positionals[0], { resume: false }).promise;
  const at = machine.counter;
  await runFor(machine, values.run);
  machine.pause();
  io.out(values.json ? JSON.stringify({ type: "restored", counter: at, firstOutput: first ?? null, diskErrors: machine.diskErrors })
    : `restored at counter ${at} (was ${restored}); ran on to ${machine.counter}, ${machine.diskErrors} disk errors`);
  return machine.diskErrors === 0 ? 0 : 1;
}
