/** `tandem` as a child process on the runtime under test, as users and services run it. */

import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { selfCommand } from "../../host/runtime/self-command.ts";

/** The CLI's entry point. */
export const TANDEM_MAIN = fileURLToPath(new URL("../../host/cli/main.ts", import.meta.url));

/** A running `tandem` and what it has printed so far. */
export interface TandemProcess {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Settles when it exits; `ms` from spawn. */
  exited: Promise<{ code: number | null; signal: string | null; ms: number }>;
  /** Sends `signal` by pid (Deno's ChildProcess.kill ignores every call after its first). */
  signal(name: NodeJS.Signals): void;
  /** Resolves once `pattern` appears in stdout or stderr; rejects after `ms` or if it exits first. */
  waitFor(pattern: string | RegExp, ms?: number): Promise<void>;
}

/** Starts `tandem args...`. */
export function startTandem(args: readonly string[], env: Record<string, string> = {}): TandemProcess {
  const [command, ...rest] = selfCommand(TANDEM_MAIN, args);
  const started = performance.now();
  const child = spawn(command, rest, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, NO_COLOR: "1", ...env } });
  let out = "";
  let err = "";
  child.stdout!.on("data", (chunk: Uint8Array) => (out += new TextDecoder().decode(chunk)));
  child.stderr!.on("data", (chunk: Uint8Array) => (err += new TextDecoder().decode(chunk)));
  const exited = new Promise<{ code: number | null; signal: string | null; ms: number }>((resolve) =>
    child.once("exit", (code, signal) => resolve({ code, signal, ms: performance.now() - started })));
  let done = false;
  void exited.then(() => (done = true));
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    signal: (name) => {
      if (!done) process.kill(child.pid!, name);
    },
    async waitFor(pattern, ms = 60_000) {
      const deadline = performance.now() + ms;
      const seen = () => (typeof pattern === "string" ? (out + err).includes(pattern) : pattern.test(out + err));
      while (!seen()) {
        if (done) throw new Error(`tandem ${args.join(" ")} exited before printing ${pattern}: ${out}${err}`);
        if (performance.now() > deadline) throw new Error(`tandem ${args.join(" ")} did not print ${pattern} within ${ms} ms: ${out}${err}`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    },
  };
}

/** Runs `tandem args...` to its end, killing it after `limitMs`; what it printed and how it ended. */
export async function runTandem(args: readonly string[], limitMs: number): Promise<{ code: number | null; signal: string | null; ms: number; stdout: string; stderr: string; timedOut: boolean }> {
  const p = startTandem(args);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    p.signal("SIGKILL");
  }, limitMs);
  const result = await p.exited;
  clearTimeout(timer);
  return { ...result, stdout: p.stdout(), stderr: p.stderr(), timedOut };
}

/** Whether `text` holds a stack trace (V8's "    at f (file:1:2)", Bun's and Deno's alike). */
export function hasStackTrace(text: string): boolean {
  return /^\s+at .+[:(]/m.test(text) || /\b(TypeError|RangeError|ReferenceError|SyntaxError)\b/.test(text);
}

/** Runs `tasks` with at most `limit` at a time. */
export async function inBatches<T>(tasks: readonly (() => Promise<T>)[], limit: number): Promise<T[]> {
  const results: T[] = new Array(tasks.length);
  let next = 0;
  const worker = async () => {
    while (next < tasks.length) {
      const index = next++;
      results[index] = await tasks[index]();
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
  return results;
}
