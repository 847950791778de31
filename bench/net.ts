/**
 * `npm run bench -- net`: what network output commit costs a guest's connections. tandem's Linux
 * guest (guest/linux, `net` workload) runs in v86 behind a real passt; a client on the host
 * reaches its services through ports passt forwards:
 *
 * - round trip: a line to the guest's tick service (port 80), which echoes each line it reads
 *   through its shell, and back, one at a time; the median over the samples;
 * - stream: the guest's counting service (port 81, `seq`) read for a fixed time; bytes per second.
 *
 * Each is measured alone (the guest's frames go straight to the network) and replicated (every
 * 25 ms to a standby V86Machine in this process; frames held until their checkpoint is
 * acknowledged), alternating phases on the same running guest, so machine load hits both alike.
 * Reported: the medians of each, `rtt_added_ms_p50` (replicated minus alone) against
 * `rtt_added_budget_ms` (the interval plus the replicated phases' median commit time: what output
 * commit is expected to add), and `stream_ratio` (replicated over alone; target ≥ 0.5).
 */

import { copyFileSync, mkdtempSync, rmSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openDisk } from "../host/disk/registry.ts";
import { V86Machine } from "../host/emulators/v86/v86-machine.ts";
import { NET_CHANNEL } from "../host/emulators/v86/v86-nic.ts";
import { bootLinux, linuxGuestFiles, linuxMachineOptions, startWorkload } from "../host/guests/linux-guest.ts";
import type { MachineOutput } from "../host/machine/machine.ts";
import { NetBridge } from "../host/net/net-bridge.ts";
import { NetLink } from "../host/net/net-link.ts";
import { startPasst } from "../host/net/passt.ts";
import { memoryPair } from "../host/protocol/transport.ts";
import { replicate } from "../host/replication/primary.ts";
import { standby } from "../host/replication/secondary.ts";
import type { Progress } from "./memory.ts";
import { median } from "./timing.ts";

const INTERVAL_MS = 25;
const PHASES = 4; // alone, replicated, alone, replicated…
const RTT_SAMPLES = 40;
const STREAM_MS = 3000;
const READY_TIMEOUT_MS = 900_000;
/** The longest one connect or one echo may take before the bench gives up (a loaded machine is slow, not this slow). */
const WAIT_MS = 30_000;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function connectTo(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: "127.0.0.1" }, () => {
      clearTimeout(timer);
      resolve(socket);
    });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no connection through passt to port ${port} within ${WAIT_MS} ms`));
    }, WAIT_MS);
    socket.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    socket.setNoDelay(true);
  });
}

/**
 * Median ms of round trips through the guest's tick service (port 80): a line sent, and its
 * "echo LINE" back, one at a time (the ticks in between are skipped). The guest's byte echo on
 * port 82 (`nc -e cat`) answered nothing here, and a connection to it was reset at once.
 */
async function roundTrips(port: number): Promise<number> {
  const socket = await connectTo(port);
  socket.setEncoding("utf8");
  const times: number[] = [];
  const echoed = new Set<string>();
  let partial = "";
  let wake: () => void = () => {};
  let ended: string | undefined;
  socket.on("data", (text: string) => {
    const lines = (partial + text).split("\n");
    partial = lines.pop()!;
    for (const line of lines) if (line.startsWith("echo ")) echoed.add(line.slice("echo ".length));
    wake();
  });
  socket.on("close", () => {
    ended ??= "the connection closed";
    wake();
  });
  socket.on("error", (error) => {
    ended = error.message;
    wake();
  });
  try {
    for (let i = 0; i < RTT_SAMPLES + 3; i++) {
      const line = `rtt ${i}`;
      const sent = performance.now();
      socket.write(`${line}\n`);
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no echo of '${line}' within ${WAIT_MS} ms`)), WAIT_MS);
        wake = () => {
          if (!echoed.has(line) && ended === undefined) return;
          clearTimeout(timer);
          if (echoed.has(line)) resolve();
          else reject(new Error(`before the echo of '${line}': ${ended}`));
        };
        wake();
      });
      if (i >= 3) times.push(performance.now() - sent); // the first few set up the connection's paths
    }
  } finally {
    socket.destroy();
  }
  return median(times);
}

/**
 * Bytes per second read from the guest's counting service over STREAM_MS, timed from the first
 * byte (the guest may take seconds to start `seq` on a loaded machine); 0 if none came in WAIT_MS.
 */
async function stream(port: number): Promise<number> {
  const socket = await connectTo(port);
  let bytes = 0;
  let started = 0;
  let first: () => void = () => {};
  const firstByte = new Promise<void>((resolve) => (first = resolve));
  socket.on("data", (chunk: Uint8Array) => {
    if (started === 0) {
      started = performance.now();
      first();
    } else bytes += chunk.length;
  });
  socket.on("error", () => {});
  try {
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([firstByte, new Promise((resolve) => (timer = setTimeout(resolve, WAIT_MS)))]);
    clearTimeout(timer);
    if (started === 0) return 0;
    await new Promise((resolve) => setTimeout(resolve, STREAM_MS));
    return (bytes / (performance.now() - started)) * 1000;
  } finally {
    socket.destroy();
  }
}

export async function runNetSuite(progress: Progress): Promise<Record<string, number>> {
  const files = linuxGuestFiles();
  const dir = mkdtempSync(join(tmpdir(), "tandem-bench-net-"));
  const [echoPort, countPort] = [await freePort(), await freePort()];
  const passt = await startPasst({ tcpForwards: [`127.0.0.1/${echoPort}:80`, `127.0.0.1/${countPort}:81`], extraArgs: ["--no-dhcpv6", "--no-ra", "--no-ndp"] });
  const images = ["primary", "standby"].map((side) => join(dir, `${side}.img`));
  for (const image of images) copyFileSync(files.dataImage, image);
  const disks = images.map((image) => openDisk(image, { format: "raw" }));
  progress("booting the Linux guest (from its snapshot when there is one)");
  const { machine } = await bootLinux(files, "bzimage", { ...linuxMachineOptions(files, "bzimage", { data: disks[0] }), network: true }, { timeoutMs: READY_TIMEOUT_MS });
  const replica = await V86Machine.create({ ...linuxMachineOptions(files, "bzimage", { data: disks[1] }), network: true });
  const bridge = new NetBridge(machine.nic!);
  bridge.attach(await NetLink.connect({ path: passt.socketPath }));
  let serial = "";
  const alone = (o: MachineOutput) => {
    if (o.channel === NET_CHANNEL) bridge.release(o.data);
    else serial += new TextDecoder().decode(o.data);
  };
  const rtt = { alone: [] as number[], replicated: [] as number[] };
  const rate = { alone: [] as number[], replicated: [] as number[] };
  const commits: number[] = [];
  try {
    machine.onOutput(alone);
    startWorkload(machine, "net");
    machine.resume();
    const deadline = performance.now() + READY_TIMEOUT_MS;
    while (!serial.includes("tandem-linux: net up")) {
      if (performance.now() > deadline || serial.includes("no DHCP answer")) throw new Error(`the guest's network did not come up: ${serial.slice(-300)}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    for (let phase = 0; phase < PHASES; phase++) {
      const replicated = phase % 2 === 1;
      progress(`phase ${phase + 1}/${PHASES} (${replicated ? "replicated" : "alone"})`);
      let stop: AbortController | undefined;
      let done: Promise<unknown> | undefined;
      if (replicated) {
        stop = new AbortController();
        const [a, b] = memoryPair();
        const sb = standby(replica, b, { heartbeatTimeoutMs: 5000 });
        done = Promise.allSettled([
          replicate(machine, a, { intervalMs: INTERVAL_MS, signal: stop.signal, release: (o) => alone(o), onCommitted: (s) => void commits.push(s.commitMs) }).promise,
          sb.promise,
        ]);
        // Past the first, whole-RAM checkpoint, and a second: measured in the steady state.
        const before = commits.length;
        const deadline = performance.now() + 4 * WAIT_MS;
        while (commits.length < before + 2) {
          if (performance.now() > deadline) throw new Error(`no checkpoint committed within ${4 * WAIT_MS} ms`);
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
      }
      (replicated ? rtt.replicated : rtt.alone).push(await roundTrips(echoPort));
      (replicated ? rate.replicated : rate.alone).push(await stream(countPort));
      if (stop) {
        stop.abort();
        await done;
        machine.onOutput(alone);
      }
    }
  } finally {
    await machine.destroy();
    await replica.destroy();
    bridge.link?.close();
    for (const disk of disks) disk.close();
    await passt.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  const rttAlone = median(rtt.alone);
  const rttReplicated = median(rtt.replicated);
  const commitMs = median(commits);
  return {
    interval_ms: INTERVAL_MS,
    rtt_ms_p50_alone: rttAlone,
    rtt_ms_p50_replicated: rttReplicated,
    rtt_added_ms_p50: rttReplicated - rttAlone,
    rtt_added_budget_ms: INTERVAL_MS + commitMs,
    commit_ms_p50: commitMs,
    stream_bytes_per_s_alone: median(rate.alone),
    stream_bytes_per_s_replicated: median(rate.replicated),
    stream_ratio: median(rate.replicated) / median(rate.alone),
  };
}
