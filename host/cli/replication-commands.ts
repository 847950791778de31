/**
 * `tandem primary` and `tandem secondary`: continuous replication of a guest (guests.ts: the
 * built-in guest in v86, or the reference machine) between two processes. With --json each prints one JSON object per line (outputs,
 * checkpoints, takeover) for a supervising program such as `tandem demo`; otherwise the guest's
 * serial output goes to stdout and a status line to a terminal's stderr.
 */

import { existsSync, statSync } from "node:fs";
import { ErrorCode, TandemError } from "../errors.ts";
import { disksDigest, stateDigest } from "../machine/state-digest.ts";
import type { Machine } from "../machine/machine.ts";
import { connect, type SocketAddress, type SocketTransport } from "../protocol/socket-transport.ts";
import type { MetricsServer } from "../metrics/metrics-server.ts";
import { PairMetrics } from "../metrics/pair-metrics.ts";
import { migrate } from "../replication/migrate.ts";
import { runPair, type PairNotice, type PeerSource } from "../replication/pair.ts";
import { DEFAULT_INTERVAL_MS, type ReleasedOutput } from "../replication/primary.ts";
import { restore, save } from "../replication/save-restore.ts";
import { Witness, type Ownership } from "../witness/witness.ts";
import { addressOption, formatAddress } from "./address.ts";
import { CommandConsole } from "./console.ts";
import { CounterLog, GUEST_OPTIONS, guestFrom, type CliGuest } from "./guests.ts";
import { Lifetime } from "./lifetime.ts";
import { NET_OPTION } from "./net-option.ts";
import { pairNetwork, type PairNetwork } from "./pair-network.ts";
import { defineCommand, flag, number, required, text } from "./options.ts";
import type { Output } from "./output.ts";
import { METRICS_OPTION, startMetrics } from "./metrics-option.ts";
import { acceptedPeers, dialledPeer, ownerPeer } from "./peer-sources.ts";
import { primaryDisks, standbyDisks } from "./replicated-disks.ts";

/** --run S: seconds the guest runs before the command acts on it. */
const RUN = number("S", "run the guest S seconds first", { min: 0, max: 86400, default: 1, unit: "seconds" });

/** A status line on a terminal's stderr (nothing otherwise), redrawn in place. */
function statusLine(): (line: string) => void {
  const tty = process.stderr.isTTY === true;
  return (line) => {
    if (tty) process.stderr.write(`\r\x1b[K${line}`);
  };
}

function printer(io: Output, json: boolean) {
  return (o: ReleasedOutput) => {
    const text = new TextDecoder().decode(o.data);
    io.out(json ? JSON.stringify({ type: "output", seq: o.seq, channel: o.channel, text }) : text.replace(/\n$/, ""));
  };
}

/** Connects to the secondary at `address`; a refusal becomes an error that says what to start. */
async function connectToSecondary(address: SocketAddress): Promise<SocketTransport> {
  try {
    return await connect(address);
  } catch (error) {
    const why = error instanceof Error ? error.message : String(error);
    throw new TandemError(ErrorCode.PeerLost, `cannot connect to ${formatAddress(address)} (${why}): is \`tandem secondary --listen ${formatAddress(address)}\` running?`);
  }
}

const CONNECT = addressOption("where `tandem secondary --listen` runs");

/** The options both hosts of a pair take for the witness. */
const WITNESS_OPTIONS = {
  witness: text("URLS", "etcd client URLs, comma-separated: a side runs the guest only while it\nholds the guest's key there, so a partition never runs two primaries.\nWithout it a standby takes over whenever its primary goes silent, and\nif the network splits with both hosts alive, BOTH run the guest"),
  "witness-name": text("NAME", "the guest's name at the witness (keys /tandem/NAME/)", { default: "tandem" }),
  side: text("NAME", "this host's name at the witness", { shown: "host-PID" }),
  "lease-ttl": number("S", "the witness lease: a primary that cannot renew it stops within it", { integer: true, min: 1, max: 60, default: 2, unit: "seconds" }),
};

/** The witness the options describe, if --witness was given. */
function witnessFrom(values: { witness?: string; "witness-name": string; side?: string; "lease-ttl": number }, listening?: SocketAddress): Witness | undefined {
  if (!values.witness) return undefined;
  return new Witness({
    endpoints: values.witness.split(",").map((url) => url.trim()).filter(Boolean),
    guest: values["witness-name"],
    side: values.side ?? `host-${process.pid}`,
    address: listening ? formatAddress(listening) : undefined,
    ttlMs: values["lease-ttl"] * 1000,
  });
}

/** Resolves on SIGINT or SIGTERM; `stop` ends the wait (and forgets the handlers). */
function untilInterrupted(): { signal: AbortSignal; forget(): void } {
  const controller = new AbortController();
  const stop = () => controller.abort("interrupted");
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  return {
    signal: controller.signal,
    forget: () => {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
    },
  };
}

/** What a pair host says about its state: a JSON line with --json, else a line on stderr. */
function noticer(io: Output, json: boolean): (n: PairNotice) => void {
  return (n) => {
    if (json) io.out(JSON.stringify({ type: "pair", state: n.state, generation: n.generation, message: n.message }));
    else io.err(`tandem: [${n.state}, generation ${n.generation}] ${n.message}`);
  };
}

/** Calls both listeners. */
function both<T>(first: (value: T) => void, second: (value: T) => void): (value: T) => void {
  return (value) => {
    first(value);
    second(value);
  };
}

/** Says where the metrics are: a JSON line with --json (for a supervisor, and tests, to find a port chosen by 0), else a log line. */
function announceMetrics(io: Output, command: string, json: boolean): (url: string) => void {
  return (url) => json ? io.out(JSON.stringify({ type: "metrics", url })) : new CommandConsole(io, command).log("metrics", `${url}/metrics`);
}

/** `report`, and the network told of each notice too (a fenced host hangs up). */
function withNetwork(report: (n: PairNotice) => void, network: PairNetwork | undefined): (n: PairNotice) => void {
  return (n) => {
    network?.notice(n);
    report(n);
  };
}

/** `tandem primary`: runs the guest and protects it with whatever standby joins, until interrupted. */
export const primaryCommand = defineCommand({
  name: "primary",
  summary: "Run a guest (the built-in one, or one --guest-file describes) and replicate it continuously\nto a `tandem secondary` built from the same description, which takes over if this process\ndies. The guest's output is released once the standby holds it. If the standby goes away the\nguest runs on, unprotected, until another joins (--listen) or the secondary at --connect is\nback; generation + 1 with each. With --witness, a primary that loses its lease pauses its\nguest for good and rejoins as a standby of the new owner.",
  options: {
    connect: CONNECT,
    listen: addressOption("where standbys join (`tandem secondary --join`)"),
    interval: number("MS", "take a checkpoint every MS milliseconds", { above: 0, max: 60_000, default: 25, unit: "milliseconds" }),
    compress: flag("compress the pages of each checkpoint"),
    digests: flag("with --json, print a digest of the whole state at each checkpoint"),
    "disk-digests": flag("with --json, print a digest of the disks at each checkpoint"),
    heartbeat: number("MS", "once fenced and standing by: take over after MS milliseconds of silence", { above: 0, max: 600_000, default: 500, unit: "milliseconds" }),
    net: NET_OPTION,
    metrics: METRICS_OPTION,
    ...WITNESS_OPTIONS,
    ...GUEST_OPTIONS,
  },
}, async ({ values }, io) => {
  if (!values.connect && !values.listen) throw new TandemError(ErrorCode.BadArgument, "primary needs --connect ADDR (a `tandem secondary --listen`) or --listen ADDR (for `tandem secondary --join`), or both");
  const guest = await guestFrom(values, { disk: primaryDisks().hook, network: values.net !== undefined });
  const machine = guest.machine;
  const interrupted = untilInterrupted();
  let accepted: Awaited<ReturnType<typeof acceptedPeers>> | undefined;
  let ownership: Ownership | undefined;
  let network: PairNetwork | undefined;
  const metrics = new PairMetrics("primary", values.interval);
  let metricsServer: MetricsServer | undefined;
  try {
    metricsServer = await startMetrics(values.metrics, metrics, announceMetrics(io, "primary", values.json));
    network = values.net ? pairNetwork(guest, values.net, io, values.json) : undefined;
    await network?.connect(); // the guest starts on a network that answers, or not at all
    // The first standby must be there at the start when dialled, as before; later ones are awaited.
    const first = values.connect ? await connectToSecondary(values.connect) : undefined;
    accepted = values.listen ? await acceptedPeers(values.listen) : undefined;
    if (accepted && values.json) io.out(JSON.stringify({ type: "listening", address: accepted.server.address }));
    const witness = witnessFrom(values, accepted?.server.address);
    ownership = await witness?.claimFresh();
    const dial = values.connect ? dialledPeer(values.connect) : undefined;
    let handedFirst = false;
    const standbys: PeerSource = (signal) => {
      if (first && !handedFirst) {
        handedFirst = true;
        return Promise.resolve(first);
      }
      // Later standbys join at --listen; without it, the secondary at --connect is dialled again.
      return (accepted?.source ?? dial!)(signal);
    };
    const status = statusLine();
    const window: { at: number; bytes: number }[] = [];
    let suspendedDisks: Uint8Array[] = [];
    await runPair(machine, {
      role: "primary",
      standbys,
      primaries: standbys,
      rejoin: witness ? ownerPeer(witness) : undefined,
      ownership,
      witness,
      release: network ? network.release(printer(io, values.json)) : printer(io, values.json),
      heartbeatTimeoutMs: values.heartbeat,
      onNotice: both(metrics.notice, withNetwork(noticer(io, values.json), network)),
      onTakeover: (result) => {
        metrics.takeover(result);
        network?.running();
        if (values.json) io.out(JSON.stringify({ type: result.outcome, ...result }));
      },
      standby: { onApplied: metrics.applied },
      replicate: {
        intervalMs: values.interval,
        compression: values.compress,
        ...(guest.responseTimeoutMs ? { sender: { responseTimeoutMs: guest.responseTimeoutMs } } : {}),
        // For a supervisor that checks a standby byte for byte: the state at each checkpoint, hashed.
        // Or just its disks: copied while paused (cheap), hashed once the guest runs again, and
        // printed before that checkpoint is sent, so a standby never holds one whose digest is unsaid.
        onSuspended: values.digests ? (checkpoint) => io.out(JSON.stringify({ type: "suspended", checkpoint, digest: stateDigest(machine, { devices: guest.stableDevices }) }))
          : values["disk-digests"] ? () => void (suspendedDisks = machine.disks.map((disk) => disk.read(0, disk.size))) : undefined,
        onResumed: values["disk-digests"] ? (checkpoint) => io.out(JSON.stringify({ type: "disks", checkpoint, digest: disksDigest(suspendedDisks) })) : undefined,
        onCommitted: (s) => {
          metrics.checkpoint(s);
          if (values.json) io.out(JSON.stringify({ type: "checkpoint", ...s }));
          const now = performance.now();
          window.push({ at: now, bytes: s.bytes });
          while (window.length > 1 && now - window[0].at > 1000) window.shift();
          const seconds = Math.max((now - window[0].at) / 1000, 0.001);
          status(`checkpoint ${s.checkpoint}: ${(window.length / seconds).toFixed(0)}/s, pause ${s.pauseMs.toFixed(2)} ms, ${s.pages} dirty pages, ` +
            `${(window.reduce((n, w) => n + w.bytes, 0) / seconds / 1e6).toFixed(1)} MB/s, ${s.heldOutputBytes} B output held`);
        },
      },
      signal: interrupted.signal,
    });
    return 0;
  } finally {
    interrupted.forget();
    await metricsServer?.close();
    ownership?.close();
    await accepted?.close();
    await network?.close();
    await guest.close();
  }
});

/** `tandem secondary`: stands by for a primary, takes over when it is lost, then protects the guest with the next standby. */
export const secondaryCommand = defineCommand({
  name: "secondary",
  summary: "Stand by for a `tandem primary`: hold its latest checkpoint, and take over, running the\nguest from that checkpoint, if the primary stops answering. A primary whose guest is not\nthis one (another guest file, memory, kernel...) is refused at connect. After a takeover\nit runs the guest and accepts standbys (`tandem secondary --join`) on its --listen address.",
  options: {
    listen: addressOption("where to wait for the primary (--connect), and, after a takeover,\nfor standbys"),
    join: addressOption("the primary to join (its --listen address), dialled until it answers"),
    heartbeat: number("MS", "take over after MS milliseconds without a word from the primary", { above: 0, max: 600_000, default: 500, unit: "milliseconds" }),
    net: NET_OPTION,
    metrics: METRICS_OPTION,
    ...WITNESS_OPTIONS,
    ...GUEST_OPTIONS,
  },
}, async ({ values }, io) => {
  if (!values.listen && !values.join) throw new TandemError(ErrorCode.BadArgument, "secondary needs --listen ADDR (for `tandem primary --connect`) or --join ADDR (a `tandem primary --listen`), or both");
  const images = standbyDisks();
  let guest: CliGuest;
  try {
    guest = await guestFrom(values, { role: "receives", disk: images.hook, network: values.net !== undefined });
  } catch (error) {
    images.close();
    throw error;
  }
  const machine = guest.machine;
  const interrupted = untilInterrupted();
  let accepted: Awaited<ReturnType<typeof acceptedPeers>> | undefined;
  let network: PairNetwork | undefined;
  // After a takeover it checkpoints at replicate's default interval.
  const metrics = new PairMetrics("secondary", DEFAULT_INTERVAL_MS);
  let metricsServer: MetricsServer | undefined;
  try {
    metricsServer = await startMetrics(values.metrics, metrics, announceMetrics(io, "secondary", values.json));
    network = values.net ? pairNetwork(guest, values.net, io, values.json) : undefined;
    accepted = values.listen ? await acceptedPeers(values.listen) : undefined;
    if (accepted && values.json) io.out(JSON.stringify({ type: "listening", address: accepted.server.address }));
    const witness = witnessFrom(values, accepted?.server.address);
    // Joining: the address given, or later the owner the witness names (after a chain of takeovers).
    const primaries = values.join ? dialledPeer(values.join) : accepted!.source;
    const status = statusLine();
    let stoppedByPrimary = true;
    await runPair(machine, {
      role: "standby",
      primaries,
      rejoin: witness ? ownerPeer(witness) : primaries,
      standbys: accepted?.source ?? noStandbys,
      witness,
      release: network ? network.release(printer(io, values.json)) : printer(io, values.json),
      heartbeatTimeoutMs: values.heartbeat,
      onNotice: both(metrics.notice, withNetwork(noticer(io, values.json), network)),
      replicate: { onCommitted: metrics.checkpoint },
      standby: { onApplied: metrics.applied },
      failOnMismatch: true, // an operator who started the wrong guest hears it, and the exit status says it
      standbyDisks: images.forMachine(machine),
      onStandby: (op) => op.onProgress((p) => status(`standing by: checkpoint ${p.checkpoints}, ${(p.bytes / 1e6).toFixed(1)} MB received`)),
      onTakeover: (result) => {
        metrics.takeover(result);
        network?.running(); // the standby's turn on the network its primary was on
        stoppedByPrimary = false;
        status("");
        if (values.json) io.out(JSON.stringify({ type: result.outcome, ...result }));
      },
      signal: interrupted.signal,
    });
    if (values.json && stoppedByPrimary && !interrupted.signal.aborted) io.out(JSON.stringify({ type: "stopped" }));
    return 0;
  } finally {
    interrupted.forget();
    await metricsServer?.close();
    await accepted?.close();
    await network?.close();
    await guest.close();
    images.close();
  }
});


/**
 * Standbys for a secondary without --listen: none ever joins it once it runs the guest, and it
 * waits only until stopped (a wait that ignored the signal kept SIGTERM from ending it).
 */
function noStandbys(signal: AbortSignal): Promise<never> {
  return new Promise<never>((_, reject) => {
    const stop = () => reject(new TandemError(ErrorCode.Aborted, "stopped"));
    if (signal.aborted) stop();
    else signal.addEventListener("abort", stop, { once: true });
  });
}

/** Runs the guest for `seconds`, or until `lifetime` ends; true if it ran the whole time. */
async function runWhileAlive(machine: Machine, seconds: number, lifetime: Lifetime): Promise<boolean> {
  await machine.resume();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const ran = new Promise<true>((resolve) => (timer = setTimeout(() => resolve(true), seconds * 1000)));
  const result = await Promise.race([ran, lifetime.stopped().then(() => false)]);
  clearTimeout(timer);
  return result;
}

/** Prints released outputs through `ui`: as JSON lines, or as the guest's text. */
function printTo(ui: CommandConsole, json: boolean) {
  return (o: ReleasedOutput) => {
    const text = new TextDecoder().decode(o.data);
    ui.out(json ? JSON.stringify({ type: "output", seq: o.seq, channel: o.channel, text }) : text.replace(/\n$/, ""));
  };
}

/**
 * For a guest that could not be built: removes the lifetime's signal handlers (taken first, so
 * that a signal while the guest builds stops it cleanly) and rethrows. Without it every bad guest
 * left two handlers on the process (MaxListenersExceededWarning in the in-process CLI tests).
 */
function disposing(lifetime: Lifetime): (error: unknown) => never {
  return (error) => {
    lifetime.dispose();
    throw error;
  };
}

/** Logs a stop by signal; exit status 0. */
function stopped(ui: CommandConsole, lifetime: Lifetime): number {
  ui.end();
  ui.log("stopped", lifetime.stoppedBy);
  return 0;
}

/** `tandem migrate`: runs the guest for --run seconds, then migrates it to `tandem secondary --listen` at --connect. */
export const migrateCommand = defineCommand({
  name: "migrate",
  summary: "Run the guest S seconds (its output then not shown), then migrate it live to a\n`tandem secondary --listen ADDR`.",
  options: {
    connect: required(CONNECT),
    run: RUN,
    "max-downtime": number("MS", "the longest the guest may stand still; the last round starts once it fits", { min: 0, max: 60_000, default: 30, unit: "milliseconds" }),
    ...GUEST_OPTIONS,
  },
}, async ({ values }, io) => {
  const lifetime = new Lifetime();
  const ui = new CommandConsole(io, "migrate", { quietStatus: values.json });
  const guest = await guestFrom(values).catch(disposing(lifetime));
  const machine = guest.machine;
  try {
    if (!(await runWhileAlive(machine, values.run, lifetime))) return stopped(ui, lifetime);
    const transport = await connectToSecondary(values.connect);
    ui.log("connected", formatAddress(values.connect));
    const op = migrate(machine, transport, { maxDowntimeMs: values["max-downtime"], release: printTo(ui, values.json), signal: lifetime.signal });
    op.onProgress((p) => ui.status(`${p.phase}: round ${p.iterations}, ${p.pages} pages, ${(p.bytes / 1e6).toFixed(1)} MB`));
    let result;
    try {
      result = await op.promise;
    } catch (error) {
      if (error instanceof TandemError && error.code === ErrorCode.Aborted) return stopped(ui, lifetime);
      throw error;
    }
    ui.end();
    // Converged: what was left fitted the target, and the handover did take no longer than it.
    const converged = result.converged && result.downtimeMs <= values["max-downtime"];
    ui.log("migrated", `downtime ${result.downtimeMs.toFixed(1)} ms`);
    ui.out(values.json ? JSON.stringify({ type: "migrated", ...result, converged, maxDowntimeMs: values["max-downtime"] })
      : `migrated in ${result.totalMs.toFixed(0)} ms (${result.iterations} rounds), downtime ${result.downtimeMs.toFixed(1)} ms: ` +
        (converged ? "converged" : result.converged ? `not converged (over the ${values["max-downtime"]} ms target)` : "not converged (stopped at the round limit)"));
    return 0;
  } finally {
    ui.end();
    lifetime.dispose();
    await guest.close();
  }
});

/** `tandem save`: runs the guest for --run seconds, then saves it to FILE. */
export const saveCommand = defineCommand({
  name: "save",
  operands: "FILE",
  minOperands: 1,
  maxOperands: 1,
  summary: "Run the guest S seconds, then save it (RAM, devices, disks) to FILE.",
  options: { run: RUN, force: flag("overwrite FILE if it exists"), ...GUEST_OPTIONS },
}, async ({ values, operands: [file] }, io) => {
  if (existsSync(file)) {
    if (statSync(file).isDirectory()) throw new TandemError(ErrorCode.BadArgument, `save: ${file} is a directory; give a file name`);
    if (!values.force) throw new TandemError(ErrorCode.BadArgument, `save: ${file} exists; give --force to overwrite it`);
  }
  const lifetime = new Lifetime();
  const ui = new CommandConsole(io, "save", { quietStatus: values.json });
  const guest = await guestFrom(values).catch(disposing(lifetime));
  const machine = guest.machine;
  const log = new CounterLog();
  machine.onOutput((o) => log.see(new TextDecoder().decode(o.data)));
  try {
    if (!(await runWhileAlive(machine, values.run, lifetime))) return stopped(ui, lifetime);
    const result = await save(machine, file, { stop: true, signal: lifetime.signal }).promise;
    ui.out(values.json ? JSON.stringify({ type: "saved", counter: log.last, ...result })
      : `saved at counter ${log.last}: ${result.bytes} bytes (${result.zeroPages} of ${result.pages} pages zero), paused ${result.pauseMs.toFixed(1)} ms`);
    return 0;
  } finally {
    lifetime.dispose();
    await guest.close();
  }
});

/** `tandem restore`: restores the guest from FILE and runs it for --run seconds, printing its output. */
export const restoreCommand = defineCommand({
  name: "restore",
  operands: "FILE",
  minOperands: 1,
  maxOperands: 1,
  summary: "Restore the guest from FILE (made by `tandem save` with the same guest options)\nand run it S seconds, printing its output.",
  options: { run: RUN, ...GUEST_OPTIONS },
}, async ({ values, operands: [file] }, io) => {
  const lifetime = new Lifetime();
  const ui = new CommandConsole(io, "restore", { quietStatus: values.json });
  const guest = await guestFrom(values, { role: "receives" }).catch(disposing(lifetime));
  const machine = guest.machine;
  const log = new CounterLog();
  machine.onOutput((o) => {
    const text = new TextDecoder().decode(o.data);
    log.see(text);
    if (!values.json) ui.out(text.replace(/\n$/, ""));
  });
  try {
    await restore(machine, file, { resume: false, signal: lifetime.signal }).promise;
    await runWhileAlive(machine, values.run, lifetime);
  } finally {
    lifetime.dispose();
    await guest.close();
  }
  const first = log.counters[0] ?? null;
  ui.out(values.json ? JSON.stringify({ type: "restored", firstOutput: first, last: log.last, diskErrors: log.diskErrors })
    : `restored; the guest went on from counter ${first} to ${log.last}, ${log.diskErrors} disk errors`);
  return log.diskErrors === 0 && first !== null ? 0 : 1;
});
