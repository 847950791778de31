/**
 * A bench peer in its own process (tcp-peer.ts, replication-peer.ts), as a standby or receiver
 * would be: started on this runtime, it prints `PORT <n>...` once it listens (one port or more);
 * any other line it prints is kept, and a JSON line is its result when it exits.
 */

import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { selfCommand } from "../host/runtime/self-command.ts";

/** A running peer. */
export interface PeerProcess {
  /** The first port it printed. */
  port: number;
  /** Every port it printed, in order. */
  ports: number[];
  /** After it exits: its JSON result line, parsed; throws if that reports an error. */
  result<R extends object>(): Promise<R>;
  kill(): void;
}

/** Starts `script` (next to this file) with `args`; resolves once it listens. `name` is for errors. */
export async function startPeer(script: string, args: string[], name: string): Promise<PeerProcess> {
  const [command, ...rest] = selfCommand(fileURLToPath(new URL(script, import.meta.url)), args);
  const child = spawn(command, rest, { stdio: ["ignore", "pipe", "inherit"] });
  const lines: string[] = [];
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  let text = "";
  const ports = await new Promise<number[]>((resolve, reject) => {
    child.stdout!.on("data", (chunk: Uint8Array) => {
      text += new TextDecoder().decode(chunk);
      const parts = text.split("\n");
      text = parts.pop()!;
      for (const line of parts) {
        const match = /^PORT (\d+(?: \d+)*)$/.exec(line);
        if (match) resolve(match[1].split(" ").map(Number));
        else lines.push(line);
      }
    });
    child.once("exit", (code) => reject(new Error(`${name} exited (${code}) before listening`)));
  });
  return {
    port: ports[0],
    ports,
    result: async <R extends object>() => {
      await exited;
      const r = JSON.parse(lines.find((l) => l.startsWith("{")) ?? "{}") as R & { error?: string };
      if (r.error) throw new Error(`${name} failed: ${r.error}`);
      return r;
    },
    kill: () => child.kill(),
  };
}
