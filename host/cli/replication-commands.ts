/**
 * `tandem primary` and `tandem secondary`: continuous replication of the built-in reference
 * machine between two processes. With --json each prints one JSON object per line (outputs,
 * checkpoints, takeover) for a supervising program such as `tandem demo`; otherwise the guest's
 * serial output goes to stdout and a status line to a terminal's stderr.
 */

import { parseArgs } from "node:util";
import { ErrorCode, TandemError } from "../errors.ts";
import { ReferenceMachine } from "../machine/reference-machine.ts";
import { connect, listen, type SocketAddress, type SocketTransport } from "../protocol/socket-transport.ts";
import { replicate, type ReleasedOutput } from "../replication/primary.ts";
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

function printer(io: Output, json: boolean) {
  return (o: ReleasedOutput) => {
    const text = new TextDecoder().decode(o.data);
    io.out(json ? JSON.stringify({ type: "output", seq: o.seq, channel: o.channel, text }) : text.replace(/\n$/, ""));
  };
}

/** Runs until interrupted (SIGINT/SIGTERM) or the other side is lost. */
export async function primaryCommand(args: readonly string[], io: Output): Promise<number> {
  const { values } = parseArgs({ args: [...args], options: { ...MACHINE_OPTIONS, connect: { type: "string" }, interval: { type: "string", default: "25" } } });
  if (!values.connect) throw new TandemError(ErrorCode.BadArgument, "primary needs --connect PORT|HOST:PORT|PATH (where `tandem secondary --listen` runs)");
  const machine = machineFrom(values);
  const transport = await connect(parseAddress(values.connect));
  const controller = new AbortController();
  const stop = () => controller.abort("interrupted");
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  const op = replicate(machine, transport, {
    intervalMs: Number(values.interval),
    release: printer(io, values.json),
    onCommitted: (s) => {
      if (values.json) io.out(JSON.stringify({ type: "checkpoint", ...s }));
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
  const result = await standby(machine, transport, { heartbeatTimeoutMs: Number(values.heartbeat), release: printer(io, values.json) }).promise;
  if (values.json) io.out(JSON.stringify({ type: result.outcome, ...result }));
  if (result.outcome !== "takeover") return 0;
  await new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  machine.pause();
  return 0;
}
