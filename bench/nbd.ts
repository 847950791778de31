/**
 * `npm run bench -- nbd`: tandem's NBD server (`tandem serve`, a child process on this runtime)
 * against `qemu-nbd` (the reference server), each serving its own copy of the same fully written
 * 256 MiB qcow2 image on a Unix socket, measured by the same client: fio with its nbd engine
 * (libnbd), 4 KiB random reads or writes at queue depth 8 for a fixed time.
 *
 * Rounds alternate which server goes first (one untimed warm-up round); the ratios are the median
 * of the per-round ratios of IOPS, the IOPS the medians of the rounds.
 */

import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { selfCommand } from "../host/runtime/self-command.ts";
import type { Progress } from "./memory.ts";
import { median } from "./timing.ts";

const IMAGE_BYTES = 256 * 1024 * 1024;
const EXPORT = "bench";
const WARMUP_ROUNDS = 1;
const ROUNDS = 5;
/** Seconds of fio per measurement. */
const RUNTIME_S = 2;
const START_TIMEOUT_MS = 30_000;

type Workload = "randread" | "randwrite";

/** A running server and how to stop it. */
interface Served {
  socket: string;
  child: ChildProcess;
}

function need(tool: string, args: string[]): void {
  if (spawnSync(tool, args, { encoding: "utf8" }).status !== 0) {
    throw new Error(`the nbd bench needs ${tool} (Debian: ${tool === "fio" ? "fio" : "qemu-utils"})`);
  }
}

/** Starts `command` and waits until it prints `ready` or `socket` accepts (qemu-nbd prints nothing). */
async function start(command: string[], socket: string, ready: string | null): Promise<Served> {
  const child = spawn(command[0], command.slice(1), { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout!.on("data", (chunk: Uint8Array) => (output += new TextDecoder().decode(chunk)));
  child.stderr!.on("data", (chunk: Uint8Array) => (output += new TextDecoder().decode(chunk)));
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${command[0]} exited: ${output}`);
    const up = ready !== null ? output.includes(ready) : spawnSync("nbdinfo", ["--size", `nbd+unix:///${EXPORT}?socket=${socket}`]).status === 0;
    if (up) return { socket, child };
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  child.kill("SIGKILL");
  throw new Error(`${command[0]} did not start within ${START_TIMEOUT_MS} ms: ${output}`);
}

async function stop(served: Served): Promise<void> {
  if (served.child.exitCode !== null) return;
  const exited = new Promise((resolve) => served.child.once("exit", resolve));
  served.child.kill("SIGTERM");
  await exited;
}

/** IOPS of one fio run against the server on `socket`. */
function fio(socket: string, workload: Workload): Promise<number> {
  const args = [
    "--name=nbd",
    "--ioengine=nbd",
    `--uri=nbd+unix:///${EXPORT}?socket=${socket}`,
    `--rw=${workload}`,
    "--bs=4k",
    "--iodepth=8",
    `--size=${IMAGE_BYTES}`,
    `--runtime=${RUNTIME_S}`,
    "--time_based",
    "--randseed=8",
    "--output-format=json",
  ];
  return new Promise((resolve, reject) => {
    const child = spawn("fio", args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout!.on("data", (chunk: Uint8Array) => (out += new TextDecoder().decode(chunk)));
    child.stderr!.on("data", (chunk: Uint8Array) => (err += new TextDecoder().decode(chunk)));
    child.once("exit", (code) => {
      // fio's nbd engine prints "fio: connected to NBD server" before the JSON.
      const json = out.slice(out.indexOf("{"));
      try {
        const job = (JSON.parse(json) as { jobs: { error: number; read: { iops: number }; write: { iops: number } }[] }).jobs[0];
        if (code !== 0 || job.error !== 0) throw new Error(`fio exited ${code}, job error ${job.error}`);
        resolve(workload === "randread" ? job.read.iops : job.write.iops);
      } catch (error) {
        reject(new Error(`fio ${workload} on ${socket}: ${error instanceof Error ? error.message : String(error)}; ${err}`));
      }
    });
  });
}

/** Runs the nbd suite. */
export async function runNbdSuite(progress: Progress): Promise<Record<string, number>> {
  need("fio", ["--version"]);
  need("qemu-nbd", ["--version"]);
  need("qemu-img", ["--version"]);
  const dir = mkdtempSync(join(tmpdir(), "tandem-bench-nbd-"));
  const servers: Served[] = [];
  try {
    progress("writing the image");
    const base = join(dir, "base.qcow2");
    if (spawnSync("qemu-img", ["create", "-q", "-f", "qcow2", base, String(IMAGE_BYTES)]).status !== 0) throw new Error("qemu-img could not create the bench image");
    if (spawnSync("qemu-io", ["-f", "qcow2", "-c", `write -P 0x6b 0 ${IMAGE_BYTES}`, base]).status !== 0) throw new Error("qemu-io could not fill the bench image");
    copyFileSync(base, join(dir, "tandem.qcow2"));
    copyFileSync(base, join(dir, "qemu.qcow2"));
    const main = fileURLToPath(new URL("../host/cli/main.ts", import.meta.url));
    const tandem = await start(selfCommand(main, ["serve", join(dir, "tandem.qcow2"), "--format", "qcow2", "--export", EXPORT, "--socket", join(dir, "tandem.sock")]), join(dir, "tandem.sock"), "listening on");
    servers.push(tandem);
    const qemu = await start(["qemu-nbd", "-t", "-f", "qcow2", "-x", EXPORT, "--socket", join(dir, "qemu.sock"), "--cache=writeback", join(dir, "qemu.qcow2")], join(dir, "qemu.sock"), null);
    servers.push(qemu);
    const metrics: Record<string, number> = {};
    for (const workload of ["randread", "randwrite"] as const) {
      const ours: number[] = [];
      const theirs: number[] = [];
      for (let round = 0; round < WARMUP_ROUNDS + ROUNDS; round++) {
        progress(`${workload}, round ${round + 1}/${WARMUP_ROUNDS + ROUNDS}`);
        const tandemFirst = round % 2 === 0;
        const first = await fio(tandemFirst ? tandem.socket : qemu.socket, workload);
        const second = await fio(tandemFirst ? qemu.socket : tandem.socket, workload);
        if (round < WARMUP_ROUNDS) continue;
        ours.push(tandemFirst ? first : second);
        theirs.push(tandemFirst ? second : first);
      }
      metrics[`nbd_${workload}_vs_qemu_nbd`] = median(ours.map((x, i) => x / theirs[i]));
      metrics[`nbd_${workload}_tandem_iops`] = median(ours);
      metrics[`nbd_${workload}_qemu_nbd_iops`] = median(theirs);
    }
    return metrics;
  } finally {
    for (const served of servers) await stop(served);
    rmSync(dir, { recursive: true, force: true });
  }
}
