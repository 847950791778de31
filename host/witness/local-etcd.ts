/**
 * A local etcd cluster (Debian's etcd-server, the `etcd` binary) on loopback, with its data in a
 * new temporary folder: for `tandem demo --witness` and for the tests. One member, or three for
 * partition tests (a majority survives the loss of one). Ports are chosen free by the system.
 */

import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ErrorCode, TandemError } from "../errors.ts";

/** One member of a {@link LocalEtcd}. */
export interface LocalEtcdMember {
  readonly name: string;
  readonly clientUrl: string;
  readonly clientPort: number;
  /** Its process, while it runs. */
  process: ChildProcess | undefined;
}

/** A running local cluster. */
export interface LocalEtcd {
  readonly members: readonly LocalEtcdMember[];
  /** Every member's client URL. */
  readonly endpoints: string[];
  /** Kills member `index` (SIGKILL), as a crash would. */
  kill(index: number): Promise<void>;
  /** Starts member `index` again on its data. */
  restart(index: number): Promise<void>;
  /** Stops every member and removes the data. */
  stop(): Promise<void>;
}

/** True if an `etcd` binary runs here. */
export function etcdAvailable(command = "etcd"): boolean {
  return spawnSync(command, ["--version"], { encoding: "utf8" }).status === 0;
}

/** A free loopback TCP port (the system picks it; the race with another taker is accepted). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(port));
    });
  });
}

/**
 * Starts `members` etcd processes (1 or 3) forming one new cluster, and waits until it answers.
 * Rejects E_WITNESS with etcd's own last words if it does not come up within `startTimeoutMs`.
 */
export async function startLocalEtcd(options: { members?: 1 | 3; command?: string; startTimeoutMs?: number } = {}): Promise<LocalEtcd> {
  const count = options.members ?? 1;
  const command = options.command ?? "etcd";
  if (!etcdAvailable(command)) throw new TandemError(ErrorCode.Witness, `'${command}' not found: install Debian's etcd-server (apt-get install etcd-server)`);
  const dir = mkdtempSync(join(tmpdir(), "tandem-etcd-"));
  const ports: { client: number; peer: number }[] = [];
  for (let i = 0; i < count; i++) ports.push({ client: await freePort(), peer: await freePort() });
  const cluster = ports.map((p, i) => `m${i}=http://127.0.0.1:${p.peer}`).join(",");
  const token = `tandem-${Date.now()}-${Math.floor(Math.random() * 1e9)}`;
  const logs: string[][] = ports.map(() => []);
  const members: LocalEtcdMember[] = ports.map((p, i) => ({ name: `m${i}`, clientUrl: `http://127.0.0.1:${p.client}`, clientPort: p.client, process: undefined }));

  const launch = (i: number) => {
    const p = ports[i];
    const child = spawn(command, [
      "--name", `m${i}`, "--data-dir", join(dir, `m${i}`),
      "--listen-client-urls", `http://127.0.0.1:${p.client}`, "--advertise-client-urls", `http://127.0.0.1:${p.client}`,
      "--listen-peer-urls", `http://127.0.0.1:${p.peer}`, "--initial-advertise-peer-urls", `http://127.0.0.1:${p.peer}`,
      "--initial-cluster", cluster, "--initial-cluster-token", token, "--initial-cluster-state", "new",
      // Fast elections for a loopback cluster: a lost leader is replaced within about a second.
      "--heartbeat-interval", "50", "--election-timeout", "500",
    ], { stdio: ["ignore", "ignore", "pipe"] });
    child.stderr!.on("data", (chunk: Uint8Array) => {
      logs[i].push(new TextDecoder().decode(chunk));
      if (logs[i].length > 20) logs[i].shift();
    });
    members[i].process = child;
  };
  const waitReady = async (urls: string[]) => {
    const deadline = performance.now() + (options.startTimeoutMs ?? 15_000);
    for (;;) {
      const ready = await Promise.all(urls.map(async (url) => {
        try {
          const reply = await fetch(`${url}/v3/kv/range`, { method: "POST", body: JSON.stringify({ key: btoa("/") }), signal: AbortSignal.timeout(500) });
          return reply.ok;
        } catch {
          return false;
        }
      }));
      if (ready.every(Boolean)) return;
      if (performance.now() > deadline) {
        await stopAll();
        throw new TandemError(ErrorCode.Witness, `the local etcd did not come up: ${logs.flat().join("").slice(-600)}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  };
  const killMember = async (i: number) => {
    const child = members[i].process;
    members[i].process = undefined;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGKILL");
    await exited;
  };
  const stopAll = async () => {
    await Promise.all(members.map((_, i) => killMember(i)));
    rmSync(dir, { recursive: true, force: true });
  };

  for (let i = 0; i < count; i++) launch(i);
  await waitReady(members.map((m) => m.clientUrl));
  return {
    members,
    endpoints: members.map((m) => m.clientUrl),
    kill: killMember,
    restart: async (i) => {
      await killMember(i);
      launch(i);
      await waitReady([members[i].clientUrl]);
    },
    stop: stopAll,
  };
}
