/**
 * `npm run bench -- v86`: how long a real x86 emulator (v86, running tandem's built-in guest
 * guest/counter) stands still per replication checkpoint, against v86's own full save_state.
 *
 * Three runs, all in one process: 128 MiB with write tracking off (the engine's detecting log
 * compares all of RAM), 128 MiB with tracking (v86 marks the pages it writes, v86-tracking.ts),
 * and 1 GiB with tracking. In each a V86Machine boots the guest with `hz=50 dirty=N`, N being
 * 0.1% of 128 MiB's pages (33: it writes N pages per tick, 50 ticks a second), the same dirty
 * rate at both sizes, so that the 1 GiB run shows what RAM size alone does to the pause. Once it prints its
 * first counter it is paused and the host writes a pseudo-random pattern (distinct per page,
 * never a zero page) over all of its RAM from 0x106000 up (the whole range the guest's dirty walk
 * covers; below it are the kernel image and the low megabyte, left as they are) with
 * emulator.write_memory, then resumed: what a long-running guest whose RAM is all in use looks
 * like to save_state, which copies every non-zero page. The guest then replicates through the
 * real engine (`replicate()`, every 500 ms) to a standby V86Machine with the same options in
 * another process (replication-peer.ts v86) over TCP loopback.
 *
 * Rounds (64), after 8 warm-up ones (the first checkpoint carries all of RAM): one checkpoint, then
 * 10 ms after its ACK, with the guest running, two samples in alternating order:
 * - save_state: pause, `await emulator.save_state()` (v86 does it synchronously), resume;
 * - breakdown: pause, collect of a detecting dirty log of the bench's own over the whole RAM
 *   (the scan replication's capture does for v86 without tracking; it sees the
 *   changes since its previous round, as the checkpoint does), saveDevices, resume. v86 runs
 *   on a shared memory, so that log splits its compare with a helper thread, as replication's
 *   does; a second log limited to one thread is timed in the same pause, for comparison. With
 *   tracking the breakdown times saveDevices only (the machine's own log belongs to the
 *   replication); save_state is not sampled at 1 GiB (seconds per sample, a GiB per copy).
 * pause_ms is CheckpointStats.pauseMs: pause, capture of the dirty pages into the stream
 * writer (scan, zero-page check, copy), device state, disk writes, outputs, resume.
 * checkpoint_vs_save_state is the median save_state over the median pause, same machine, same
 * rounds (128 MiB with tracking; _128mib_detecting without). Also reported: dirty pages and stream
 * bytes per checkpoint, the device state's size and what of it a checkpoint sends
 * (device_state_bytes_p50: a delta against the previous checkpoint's), save_state bytes, and the
 * scan's rate over RAM. The samples
 * between checkpoints stop the guest too, so it runs for less than the interval before the next
 * checkpoint (more so at 128 MiB, where save_state is slower): dirty pages per checkpoint vary
 * between sizes and runs, and are reported as measured.
 * The guest's serial output is checked: counters keep coming, no disk error, no exception.
 *
 * tracking_slowdown: test/support/jit-guest, a loop v86's JIT compiles that stores 4096 dwords
 * per pass (one store in four instructions: a worst case for marking stores), run on two
 * machines in the same process, one marking and one not, 400 ms each in turn for 12 turns after
 * 2 warm-up ones; passes per second with tracking over passes per second without.
 */

import { readFileSync } from "node:fs";
import { V86Machine } from "../host/emulators/v86/v86-machine.ts";
import { DetectingDirtyLog } from "../host/memory/detecting-dirty-log.ts";
import { PAGE_SIZE } from "../host/memory/guest-memory.ts";
import { seededRandom } from "../host/prng.ts";
import { connect } from "../host/protocol/socket-transport.ts";
import { replicate } from "../host/replication/primary.ts";
import type { Progress } from "./memory.ts";
import { startPeer } from "./peer-process.ts";
import { median } from "./timing.ts";

const MIB = 1 << 20;
const HZ = 50;
/** Pages the guest dirties per tick: 0.1% of 128 MiB's pages, at every size. */
const DIRTY_PER_TICK = Math.round(((128 * MIB) / 4096) * 0.001);
const INTERVAL_MS = 500;
const SIDE_DELAY_MS = 10;
const WARMUP = 8;
const MEASURED = 64;
/** The first page of the guest's dirty walk (guest/counter/README.md). */
const FILL_START = 0x106000;
const BOOT_TIMEOUT_MS = 30_000;

/** A v86 standby, built with the primary's options, in its own process. */
function peer(mib: number, cmdline: string) {
  return startPeer("./replication-peer.ts", ["v86", String(mib), cmdline], "the v86 standby");
}

/** Writes a pseudo-random pattern, distinct per page and never all zero, over RAM from FILL_START up. */
function fillRam(machine: V86Machine, memoryBytes: number): void {
  const random = seededRandom(86);
  const base = new Uint32Array(MIB / 4);
  for (let i = 0; i < base.length; i++) base[i] = (random() * 2 ** 32) >>> 0;
  const chunk = new Uint32Array(MIB / 4);
  for (let at = FILL_START; at < memoryBytes; at += MIB) {
    const length = Math.min(MIB, memoryBytes - at);
    chunk.set(base);
    for (let page = 0; page < length / PAGE_SIZE; page++) chunk[page * (PAGE_SIZE / 4)] = (at / PAGE_SIZE + page) | 0x80000000;
    machine.emulator.write_memory(new Uint8Array(chunk.buffer, 0, length), at);
  }
}

/** Resolves when the guest has printed its first counter line. */
function booted(machine: V86Machine): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`v86 bench: the guest printed no counter within ${BOOT_TIMEOUT_MS} ms`)), BOOT_TIMEOUT_MS);
    machine.onOutput((o) => {
      if (new TextDecoder().decode(o.data).startsWith("counter ")) {
        clearTimeout(timer);
        machine.onOutput(() => {});
        resolve();
      }
    });
  });
}

interface SizeResult {
  pauseP50: number;
  pauseP99: number;
  saveStateP50: number;
  scanP50: number;
  /** The same scan by a log limited to one thread, in the same pauses. */
  scanOneThreadP50: number;
  /** Threads the scan used (2 when v86 runs on a shared memory and a helper thread split it). */
  scanThreads: number;
  devicesP50: number;
  dirtyPages: number;
  checkpointBytes: number;
  /** Device state sent per checkpoint (a delta against the previous checkpoint's), median. */
  deviceSentBytes: number;
  /** The whole device state, as saveDevices returns it. */
  deviceBytes: number;
  saveStateBytes: number;
}

async function size(mib: number, tracking: boolean, sampleSaveState: boolean, progress: Progress): Promise<SizeResult> {
  const memoryBytes = mib * MIB;
  const cmdline = `hz=${HZ} dirty=${DIRTY_PER_TICK}`;
  const label = `${mib} MiB, tracking ${tracking ? "on" : "off"}`;
  progress(`${label}: starting the standby and the primary`);
  const standby = await peer(mib, cmdline);
  let machine: V86Machine | undefined;
  try {
    machine = await V86Machine.create({ memoryBytes, cmdline, tracking: tracking ? "marks" : "off" });
    const m = machine;
    if ((m.tracking.mode === "marks") !== tracking) throw new Error(`v86 bench: tracking is ${JSON.stringify(m.tracking)}`);
    const up = booted(m);
    m.resume();
    await up;
    m.pause();
    fillRam(m, memoryBytes);
    // The bench's own scanners, for the breakdown without tracking; primed (their first collect is all of RAM).
    const scanner = tracking ? undefined : new DetectingDirtyLog(m.memory[0]);
    const oneThread = tracking ? undefined : new DetectingDirtyLog(m.memory[0], { threads: 1 });
    for (const log of [scanner, oneThread]) {
      log?.arm();
      log?.collect();
    }
    m.resume();

    const transport = await connect({ port: standby.port });
    const pauses: number[] = [];
    const saves: number[] = [];
    const scans: number[] = [];
    const oneThreadScans: number[] = [];
    let threads = 1;
    const devices: number[] = [];
    const pages: number[] = [];
    const bytes: number[] = [];
    const deviceSent: number[] = [];
    let deviceBytes = 0;
    let saveStateBytes = 0;
    const serial: string[] = [];
    let done!: () => void;
    let failed!: (error: Error) => void;
    const finished = new Promise<void>((resolve, reject) => ((done = resolve), (failed = reject)));

    const timeSaveState = async () => {
      const start = performance.now();
      m.pause();
      const state = await m.emulator.save_state(); // synchronous inside v86: no other task runs meanwhile
      m.resume();
      return { ms: performance.now() - start, bytes: state.byteLength };
    };
    const timeBreakdown = () => {
      m.pause();
      const start = performance.now();
      scanner?.collect();
      const scanned = performance.now();
      const state = m.saveDevices();
      const end = performance.now();
      oneThread?.collect();
      const alone = performance.now();
      m.resume();
      threads = scanner?.parallel ? 2 : 1;
      return { scanMs: scanned - start, devicesMs: end - scanned, oneThreadMs: alone - end, bytes: state.length };
    };
    const side = async (round: number) => {
      if (!m.running) return; // throttled or stopping: nothing to compare with
      const measured = round > WARMUP;
      for (const which of round % 2 === 0 ? ["save", "breakdown"] : ["breakdown", "save"]) {
        if (which === "save") {
          if (!sampleSaveState) continue;
          const s = await timeSaveState();
          if (measured) saves.push(s.ms);
          saveStateBytes = s.bytes;
        } else {
          const b = timeBreakdown();
          if (measured) {
            scans.push(b.scanMs);
            oneThreadScans.push(b.oneThreadMs);
            devices.push(b.devicesMs);
          }
          deviceBytes = b.bytes;
        }
      }
      if (round === WARMUP + MEASURED) done();
    };

    const op = replicate(m, transport, {
      intervalMs: INTERVAL_MS,
      // The first checkpoint carries all of RAM (a GiB in the largest run): on a loaded machine
      // its ACK can take longer than the sender's default 30 s.
      sender: { responseTimeoutMs: 300_000 },
      release: (o) => void serial.push(new TextDecoder().decode(o.data)),
      onCommitted: (s) => {
        if (s.checkpoint > WARMUP && s.checkpoint <= WARMUP + MEASURED) {
          pauses.push(s.pauseMs);
          pages.push(s.pages);
          bytes.push(s.bytes);
          deviceSent.push(s.deviceBytes);
        }
        progress(`${label}: checkpoint ${s.checkpoint}/${WARMUP + MEASURED}`);
        if (s.checkpoint <= WARMUP + MEASURED) setTimeout(() => void side(s.checkpoint).catch(failed), SIDE_DELAY_MS);
      },
    });
    op.promise.catch((error: Error) => failed(error));
    try {
      await finished;
    } finally {
      op.abort("the bench is done");
      await op.promise.catch(() => {});
      transport.close();
    }
    const taken = await standby.result<{ outcome?: string; checkpoint?: number }>();
    if (taken.outcome !== "stopped") throw new Error(`v86 bench: the standby did not stand down (${JSON.stringify(taken)})`);

    const lines = serial.join("").split("\n");
    const counters = lines.filter((l) => l.startsWith("counter ")).length;
    const bad = lines.filter((l) => l.startsWith("disk errors") || l.includes("exception"));
    if (counters < MEASURED || bad.length > 0) {
      throw new Error(`v86 bench: the guest misbehaved during the run (${counters} counters, ${JSON.stringify(bad.slice(0, 3))})`);
    }
    const sortedPauses = pauses.slice().sort((a, b) => a - b);
    return {
      pauseP50: median(pauses),
      pauseP99: sortedPauses[Math.floor(sortedPauses.length * 0.99)],
      saveStateP50: median(saves),
      scanP50: median(scans),
      scanOneThreadP50: median(oneThreadScans),
      scanThreads: threads,
      devicesP50: median(devices),
      dirtyPages: median(pages),
      checkpointBytes: median(bytes),
      deviceSentBytes: median(deviceSent),
      deviceBytes,
      saveStateBytes,
    };
  } catch (error) {
    standby.kill();
    throw error;
  } finally {
    await machine?.destroy();
  }
}

/** Passes per second of the JIT guest with tracking over without, two machines taking turns in one process. */
async function trackingSlowdown(progress: Progress): Promise<{ ratio: number; withPerS: number; withoutPerS: number }> {
  const guest = new Uint8Array(readFileSync(new URL("../test/support/jit-guest/jit-guest.bin", import.meta.url)));
  const passes = (m: V86Machine) => new DataView(m.memory[0].bytes().buffer, m.memory[0].bytes().byteOffset + 0x500000, 4).getUint32(0, true);
  const machines = [
    await V86Machine.create({ multiboot: guest, memoryBytes: 32 * MIB, disk: null, tracking: "marks" }),
    await V86Machine.create({ multiboot: guest, memoryBytes: 32 * MIB, disk: null, tracking: "off" }),
  ];
  try {
    const done = [0, 0];
    const ms = [0, 0];
    for (let turn = 0; turn < 14; turn++) {
      progress(`tracking slowdown: turn ${turn + 1}/14`);
      for (let i = 0; i < 2; i++) {
        const m = machines[turn % 2 === 0 ? i : 1 - i];
        const k = machines.indexOf(m);
        const before = passes(m);
        const start = performance.now();
        m.resume();
        await new Promise((resolve) => setTimeout(resolve, 400));
        m.pause();
        if (turn >= 2) {
          done[k] += passes(m) - before;
          ms[k] += performance.now() - start;
        }
      }
    }
    const withPerS = done[0] / (ms[0] / 1000);
    const withoutPerS = done[1] / (ms[1] / 1000);
    return { ratio: withPerS / withoutPerS, withPerS, withoutPerS };
  } finally {
    for (const m of machines) await m.destroy();
  }
}

/** Runs the v86 suite; returns its metrics. */
export async function runV86Suite(progress: Progress): Promise<Record<string, number>> {
  const metrics: Record<string, number> = {};
  const runs = [
    { mib: 128, tracking: false, saveState: true, key: "128mib_detecting" },
    { mib: 128, tracking: true, saveState: true, key: "128mib" },
    { mib: 1024, tracking: true, saveState: false, key: "1gib" },
  ];
  for (const run of runs) {
    const r = await size(run.mib, run.tracking, run.saveState, progress);
    const s = run.key;
    metrics[`pause_ms_p50_${s}`] = r.pauseP50;
    metrics[`pause_ms_p99_${s}`] = r.pauseP99;
    if (run.saveState) {
      metrics[`save_state_ms_p50_${s}`] = r.saveStateP50;
      metrics[`checkpoint_vs_save_state_${s}`] = r.saveStateP50 / r.pauseP50;
      metrics[`save_state_bytes_${s}`] = r.saveStateBytes;
    }
    if (!run.tracking) {
      metrics[`dirty_scan_ms_p50_${s}`] = r.scanP50;
      metrics[`dirty_scan_gb_per_s_${s}`] = (run.mib * MIB) / (r.scanP50 / 1000) / 1e9;
      metrics[`dirty_scan_threads_${s}`] = r.scanThreads;
      metrics[`dirty_scan_ms_p50_1thread_${s}`] = r.scanOneThreadP50;
    }
    metrics[`save_devices_ms_p50_${s}`] = r.devicesP50;
    metrics[`dirty_pages_per_checkpoint_${s}`] = r.dirtyPages;
    metrics[`checkpoint_bytes_p50_${s}`] = r.checkpointBytes;
    metrics[`device_state_bytes_${s}`] = r.deviceBytes;
    metrics[`device_state_bytes_p50_${s}`] = r.deviceSentBytes;
  }
  metrics.checkpoint_vs_save_state = metrics.checkpoint_vs_save_state_128mib;
  metrics.device_state_bytes_p50 = metrics.device_state_bytes_p50_128mib;
  const slowdown = await trackingSlowdown(progress);
  metrics.tracking_slowdown = slowdown.ratio;
  metrics.jit_guest_passes_per_s_tracking = slowdown.withPerS;
  metrics.jit_guest_passes_per_s_no_tracking = slowdown.withoutPerS;
  return metrics;
}
