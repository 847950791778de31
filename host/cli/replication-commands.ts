/**
 * `tandem primary` and `tandem secondary`: continuous replication of a guest (guests.ts: the
 * built-in guest in v86, or the reference machine) between two processes. With --json each prints one JSON object per line (outputs,
 * checkpoints, takeover) for a supervising program such as `tandem demo`; otherwise the guest's
 * serial output goes to stdout and a status line to a terminal's stderr.
 */

import { parseArgs } from "node:util";
import { ErrorCode, TandemError } from "../errors.ts";
import { disksDigest, stateDigest } from "../machine/state-digest.ts";
import type { Machine } from "../machine/machine.ts";
import { connect, listen, type SocketAddress, type SocketTransport } from "../protocol/socket-transport.ts";
import { migrate } from "../replication/migrate.ts";
import { replicate, type ReleasedOutput } from "../replication/primary.ts";
import { restore, save } from "../replication/save-restore.ts";
import { standby } from "../replication/secondary.ts";
import type { Output } from "./commands.ts";
import { CounterLog, GUEST_OPTIONS, guestFrom } from "./guests.ts";

/** "PORT", "HOST:PORT" or a socket path (anything with a slash). */
export function parseAddress(text: string): SocketAddress {
  if (text.includes("/")) return { path: text };
  const [host, port] = text.includes(":") ? text.split(":") : ["127.0.0.1", text];
  const n = Number(port);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new TandemError(ErrorCode.BadArgument, `'${text}' is not a port, host:port or socket path`);
  return { host, port: n };
}

/** A status line on a terminal's stderr (nothing otherwise), redrawn in place. */
function statusLine(): (line: string) => void {
  const tty = process.stderr.isTTY === true;
  return (line) => {
    if (tty) process.stderr.write(`\r\x1b[K${line}`);
  };
}

/** Seconds of running the guest before acting on it (--run S). */
function runFor(machine: Machine, seconds: string): Promise<void> {
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
      ...GUEST_OPTIONS, connect: { type: "string" }, interval: { type: "string", default: "25" }, compress: { type: "boolean", default: false },
      digests: { type: "boolean", default: false }, "disk-digests": { type: "boolean", default: false },
    },
  });
  if (!values.connect) throw new TandemError(ErrorCode.BadArgument, "primary needs --connect PORT|HOST:PORT|PATH (where `tandem secondary --listen` runs)");
  const guest = await guestFrom(values);
  const machine = guest.machine;
  const transport = await connect(parseAddress(values.connect));
  const controller = new AbortController();
  const stop = () => controller.abort("interrupted");
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  const status = statusLine();
  const window: { at: number; bytes: number }[] = [];
  let suspendedDisks: Uint8Array[] = [];
  const op = replicate(machine, transport, {
    intervalMs: Number(values.interval),
    compression: values.compress,
    release: printer(io, values.json),
    // For a supervisor that checks a standby byte for byte: the state at each checkpoint, hashed.
    // Or just its disks: copied while paused (cheap), hashed once the guest runs again, and
    // printed before that checkpoint is sent, so a standby never holds one whose digest is unsaid.
    onSuspended: values.digests ? (checkpoint) => io.out(JSON.stringify({ type: "suspended", checkpoint, digest: stateDigest(machine, { devices: guest.stableDevices }) }))
      : values["disk-digests"] ? () => void (suspendedDisks = machine.disks.map((disk) => disk.read(0, disk.size))) : undefined,
    onResumed: values["disk-digests"] ? (checkpoint) => io.out(JSON.stringify({ type: "disks", checkpoint, digest: disksDigest(suspendedDisks) })) : undefined,
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
    await guest.close();
  }
}

/** Accepts one primary, stands by, and after a takeover runs the machine until interrupted. */
export async function secondaryCommand(args: readonly string[], io: Output): Promise<number> {
  const { values } = parseArgs({ args: [...args], options: { ...GUEST_OPTIONS, listen: { type: "string" }, heartbeat: { type: "string", default: "500" } } });
  if (!values.listen) throw new TandemError(ErrorCode.BadArgument, "secondary needs --listen PORT|HOST:PORT|PATH");
  const guest = await guestFrom(values);
  const machine = guest.machine;
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
  if (result.outcome === "takeover") {
    await new Promise<void>((resolve) => {
      process.once("SIGINT", resolve);
      process.once("SIGTERM", resolve);
    });
  }
  await guest.close();
  return 0;
}

/** Runs the guest for --run seconds, then migrates it to `tandem secondary --listen` at --connect. */
export async function migrateCommand(args: readonly string[], io: Output): Promise<number> {
  const { values } = parseArgs({
    args: [...args],
    options: { ...GUEST_OPTIONS, connect: { type: "string" }, run: { type: "string", default: "1" }, "max-downtime": { type: "string", default: "30" } },
  });
  if (!values.connect) throw new TandemError(ErrorCode.BadArgument, "migrate needs --connect PORT|HOST:PORT|PATH (where `tandem secondary --listen` runs)");
  const guest = await guestFrom(values);
  const machine = guest.machine;
  await runFor(machine, values.run);
  const status = statusLine();
  const op = migrate(machine, await connect(parseAddress(values.connect)), { maxDowntimeMs: Number(values["max-downtime"]), release: printer(io, values.json) });
  op.onProgress((p) => status(`${p.phase}: round ${p.iterations}, ${p.pages} pages, ${(p.bytes / 1e6).toFixed(1)} MB`));
  const result = await op.promise.finally(() => guest.close());
  status("");
  io.out(values.json ? JSON.stringify({ type: "migrated", ...result })
    : `migrated in ${result.totalMs.toFixed(0)} ms (${result.iterations} rounds, ${result.converged ? "converged" : "stopped at the limit"}), downtime ${result.downtimeMs.toFixed(1)} ms`);
  return 0;
}

/** Runs the guest for --run seconds, then saves it to FILE. */
export async function saveCommand(args: readonly string[], io: Output): Promise<number> {
  const { values, positionals } = parseArgs({ args: [...args], allowPositionals: true, options: { ...GUEST_OPTIONS, run: { type: "string", default: "1" } } });
  if (positionals.length !== 1) throw new TandemError(ErrorCode.BadArgument, "save needs one FILE");
  const guest = await guestFrom(values);
  const machine = guest.machine;
  const log = new CounterLog();
  machine.onOutput((o) => log.see(new TextDecoder().decode(o.data)));
  await runFor(machine, values.run);
  const result = await save(machine, positionals[0], { stop: true }).promise.finally(() => guest.close());
  io.out(values.json ? JSON.stringify({ type: "saved", counter: log.last, ...result })
    : `saved at counter ${log.last}: ${result.bytes} bytes (${result.zeroPages} of ${result.pages} pages zero), paused ${result.pauseMs.toFixed(1)} ms`);
  return 0;
}

/** Restores the guest from FILE and runs it for --run seconds, printing its output. */
export async function restoreCommand(args: readonly string[], io: Output): Promise<number> {
  const { values, positionals } = parseArgs({ args: [...args], allowPositionals: true, options: { ...GUEST_OPTIONS, run: { type: "string", default: "1" } } });
  if (positionals.length !== 1) throw new TandemError(ErrorCode.BadArgument, "restore needs one FILE");
  const guest = await guestFrom(values);
  const machine = guest.machine;
  const log = new CounterLog();
  machine.onOutput((o) => {
    const text = new TextDecoder().decode(o.data);
    log.see(text);
    if (!values.json) io.out(text.replace(/\n$/, ""));
  });
  try {
    await restore(machine, positionals[0], { resume: false }).promise;
    await runFor(machine, values.run);
  } finally {
    await guest.close();
  }
  const first = log.counters[0] ?? null;
  io.out(values.json ? JSON.stringify({ type: "restored", firstOutput: first, last: log.last, diskErrors: log.diskErrors })
    : `restored; the guest went on from counter ${first} to ${log.last}, ${log.diskErrors} disk errors`);
  return log.diskErrors === 0 && first !== null ? 0 : 1;
}
