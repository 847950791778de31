/**
 * The primary side of continuous replication (Remus, Kemari): every interval the machine is
 * paused, what changed is captured, the machine resumes at once (speculative execution), and the
 * capture goes to the standby as one transaction. Outputs of each epoch are held until its
 * checkpoint is acknowledged: the outside world never sees an output the standby could not
 * reproduce. docs/replication.md states the guarantees.
 */

import { ErrorCode, TandemError } from "../errors.ts";
import type { Machine, MachineOutput } from "../machine/machine.ts";
import { startOperation, type OpHandle } from "../ops/operation.ts";
import { TransactionSender, type SenderOptions } from "../protocol/sender.ts";
import { StreamWriter } from "../protocol/stream/writer.ts";
import type { Transport } from "../protocol/transport.ts";
import { DeviceCapture, MemoryCapture, captureDiskWrites, type DiskWrite } from "./capture.ts";
import { DiskSync, type DiskCopyOptions, type DiskCopyStatus } from "./disk-sync.ts";
import { peerCall, sendStreamHeader, sendTransaction } from "./peer-calls.ts";
import { ReleaseGate, type ReleasedOutput } from "./release-gate.ts";
import { streamHeaderFor } from "./stream-guest.ts";

export type { ReleasedOutput } from "./release-gate.ts";

/** The standby's answers, as replication reads them. */
function standbyCall<T>(call: Promise<T>): Promise<T> {
  return peerCall("standby", call, "; is it fenced to a newer generation?");
}

/** What one checkpoint cost. */
export interface CheckpointStats {
  checkpoint: number;
  /** How long the guest was stopped. */
  pauseMs: number;
  /** Pages that changed, how many of those were all zero, and how many went as deltas. */
  pages: number;
  zeroPages: number;
  deltaPages: number;
  /** Stream bytes sent. */
  bytes: number;
  /** Bytes of device state sent (a delta against the previous checkpoint's, after the first). */
  deviceBytes: number;
  /** From the pause to the standby's ACK. */
  commitMs: number;
  /** The highest output seq committed so far (this checkpoint's outputs are released now). */
  lastSeq: number;
  /** Output bytes held when the ACK came (this checkpoint's and the running epoch's). */
  heldOutputBytes: number;
  /** The standby holds every disk whole as of this checkpoint: a takeover would keep the guest's disks. */
  protected: boolean;
  /** Per disk, how the background copy goes. */
  diskCopy: DiskCopyStatus[];
}

/** Milliseconds between checkpoints unless told otherwise (Remus's epochs). */
export const DEFAULT_INTERVAL_MS = 25;

/** Options of {@link replicate}. */
export interface ReplicateOptions {
  /** Milliseconds from one checkpoint's start to the next. Default 25 (Remus's epochs). */
  intervalMs?: number;
  /** The generation stamped on every checkpoint; a standby refuses lower ones. Default 1. */
  generation?: number;
  /**
   * Send changed pages as deltas against what the standby holds, when smaller (Remus's checkpoint
   * compression). Costs a copy of RAM. Default false.
   */
  compression?: boolean;
  /** Where committed outputs go, in seq order. Default: dropped. Ignored when `gate` is given. */
  release?: (output: ReleasedOutput) => void;
  /**
   * The release gate outputs pass (release-gate.ts). A pair that outlives one replication passes
   * its own, so seqs continue and a witness's lease is checked on every release. Default: a gate
   * over `release` with no lease.
   */
  gate?: ReleaseGate;
  /**
   * Asked when the standby is lost, before anything held is released: does this side still own
   * the guest? With a witness this wins the key again with a higher generation, so the lost
   * standby can never take over. If it resolves false, the guest is paused, nothing is released,
   * and replication rejects E_FENCED. Default: yes (Remus: a lost standby is taken as dead).
   */
  confirmOwnership?: () => Promise<boolean>;
  /**
   * At most this many output bytes are held (waiting for their checkpoint's ACK); past it the
   * guest is paused until acknowledgements bring it back under. Default: no limit.
   */
  maxHeldOutputBytes?: number;
  /** Called while the guest is paused, after its state was captured (libxl's checkpoint callbacks). */
  onSuspended?: (checkpoint: number) => void;
  /** Called when the guest runs again after a checkpoint's capture. */
  onResumed?: (checkpoint: number) => void;
  /** Called when a checkpoint is acknowledged. */
  onCommitted?: (stats: CheckpointStats) => void;
  /** Cancels replication: the standby is told to stand down, the machine keeps running. */
  signal?: AbortSignal;
  /** Options of the transaction sender. */
  sender?: SenderOptions;
  /** Options of the background disk copy (docs/replication.md, "Disks"). */
  diskCopy?: DiskCopyOptions;
}

/**
 * Replicates `machine` to the standby at the other end of `transport`. It never resolves: it ends
 * when cancelled (rejecting E_ABORTED) or when the standby is lost (E_PEER_LOST), or refuses
 * (E_FAILED). Either way the machine is left running, and outputs held for checkpoints that will
 * never be acknowledged are released: with no standby to take over, this machine is the only copy.
 * The exception is a fenced primary (its gate shut, or `confirmOwnership` said no): it rejects
 * E_FENCED with the machine paused and nothing more released, and does not tell the standby to
 * stand down (it is the standby's turn). Progress reports count checkpoints, bytes and pages.
 */
export function replicate(machine: Machine, transport: Transport, options: ReplicateOptions = {}): OpHandle<never> {
  const intervalMs = options.intervalMs ?? DEFAULT_INTERVAL_MS;
  const generation = options.generation ?? 1;
  if (!(intervalMs >= 0) || !Number.isSafeInteger(generation) || generation < 0) {
    throw new TandemError(ErrorCode.BadArgument, `intervalMs ${intervalMs} and generation ${generation}: expected non-negative numbers`);
  }
  const gate = options.gate ?? new ReleaseGate(options.release ?? (() => {}));
  return startOperation("replicate", async (ctx) => {
    const sender = new TransactionSender(transport, options.sender);
    const memory = new MemoryCapture(machine, { compression: options.compression });
    const devices = new DeviceCapture();
    const writer = new StreamWriter(streamHeaderFor(machine));
    const disks = new DiskSync(machine, writer, options.diskCopy);
    let epochOutputs: MachineOutput[] = [];
    let epochDiskWrites: DiskWrite[] = [];
    // Checkpoint numbers continue those the disks' change logs saw, so a standby's record names one checkpoint only.
    const firstCheckpoint = disks.lastCheckpoint();
    let checkpoint = firstCheckpoint;
    let totalBytes = 0;
    let totalPages = 0;
    const maxHeld = options.maxHeldOutputBytes ?? Infinity;
    let held = 0;
    let throttled = false;
    machine.onOutput((o) => {
      epochOutputs.push({ channel: o.channel, data: o.data.slice() });
      held += o.data.length;
      if (held > maxHeld && !throttled && machine.running) {
        throttled = true; // too much output waiting for ACKs: the guest waits too
        void machine.pause();
      }
    });
    machine.onDiskWrite((disk, offset, data) => epochDiskWrites.push({ disk, offset, data: data.slice() }));
    // Before the first checkpoint there is nothing to stand down from: cancelling just hangs up.
    // After it, the loop notices at its next check and tells the standby (END) before hanging up.
    const stop = () => {
      if (checkpoint === firstCheckpoint) sender.close();
    };
    ctx.signal.addEventListener("abort", stop, { once: true });
    try {
      await standbyCall(sender.open());
      await sendStreamHeader(sender, writer, "standby", machine.identity);
      await disks.begin(sender, standbyCall);
      ctx.report({ phase: "syncing", ...copyProgress(disks.status()) });
      memory.arm(); // before the first copy: no write is lost
      for (;;) {
        ctx.throwIfAborted();
        const started = performance.now();
        await machine.pause();
        checkpoint++;
        const { pages, zeroPages, deltaPages } = memory.capture(writer);
        const deviceBytes = devices.capture(machine, writer);
        // Disks travel in the background copy; a checkpoint carries the epoch's writes.
        const carried = machine.disks.map((_, i) => epochDiskWrites.some((w) => w.disk === i));
        captureDiskWrites(machine, epochDiskWrites, writer);
        disks.captured(checkpoint);
        const sealed = gate.seal(epochOutputs);
        // Counted now: the gate releases them by taking them out of this very array.
        const sealedBytes = sealed.reduce((n, o) => n + o.data.length, 0);
        gate.hold(checkpoint, sealed);
        epochOutputs = [];
        epochDiskWrites = [];
        writer.outputs(sealed);
        writer.checkpointEnd(checkpoint, generation, gate.lastSeq);
        const bytes = writer.takeView(); // sent and acknowledged before the next capture writes again
        options.onSuspended?.(checkpoint);
        if (!throttled) await machine.resume();
        options.onResumed?.(checkpoint);
        const pauseMs = performance.now() - started;
        await standbyCall(sendTransaction(sender, bytes));
        disks.acknowledged(checkpoint, carried);
        totalBytes += bytes.length;
        totalPages += pages;
        const stats = {
          checkpoint, pauseMs, pages, zeroPages, deltaPages, bytes: bytes.length, deviceBytes, commitMs: performance.now() - started,
          lastSeq: gate.lastSeq, heldOutputBytes: held, protected: disks.protected, diskCopy: disks.status(),
        };
        options.onCommitted?.(stats);
        // Acknowledged: the standby can reproduce them now. The gate may still refuse (lease lost).
        if (!gate.acknowledge(checkpoint)) throw fenced();
        held -= sealedBytes;
        if (throttled && held <= maxHeld) {
          throttled = false;
          await machine.resume();
        }
        ctx.report({
          phase: disks.protected ? "protected" : "syncing", checkpoints: checkpoint - firstCheckpoint, bytes: totalBytes, pages: totalPages,
          ...copyProgress(disks.status()),
        });
        // Between checkpoints, while the guest runs: the background disk copy.
        if (!disks.copied) await disks.pump(sender, standbyCall, started + intervalMs, ctx.signal);
        const wait = started + intervalMs - performance.now();
        if (wait > 0) await sleep(wait, ctx.signal);
      }
    } catch (error) {
      // A fenced primary leaves the standby be: it may have to take over.
      if (ctx.signal.aborted && sender.error === undefined && !gate.isShut) {
        writer.take(); // whatever a cut-short capture left
        writer.end();
        await sender.atomic(writer.take()).catch(() => {}); // best effort: it may have gone meanwhile
      }
      if (gate.isShut) throw fenced();
      // Alone now, unless the witness says otherwise: what was held goes out, and from here on
      // outputs go out as they come (each through the gate, so a lease still counts).
      if (!ctx.signal.aborted && options.confirmOwnership && !(await options.confirmOwnership())) {
        gate.shut();
        throw fenced();
      }
      gate.hold(Number.MAX_SAFE_INTEGER, gate.seal(epochOutputs));
      epochOutputs = [];
      if (!gate.releaseHeld()) throw fenced();
      throw error;
    } finally {
      ctx.signal.removeEventListener("abort", stop);
      sender.close();
      machine.onDiskWrite(() => {});
      if (gate.isShut) {
        machine.onOutput(() => {}); // a fenced guest stays paused; anything it still says is dropped
        if (machine.running) await machine.pause();
      } else {
        machine.onOutput((o) => void gate.direct(o));
        if (!machine.running) await machine.resume();
      }
    }
  }, { signal: options.signal });
}

function fenced(): TandemError {
  return new TandemError(ErrorCode.Fenced, "this primary no longer owns the guest (lease lost, or the witness names another side): guest paused, nothing more released");
}

/** The disks' copy as progress: bytes copied and to copy, over all disks. */
function copyProgress(status: readonly DiskCopyStatus[]): { copied: number; copyTotal: number } {
  return { copied: status.reduce((n, s) => n + s.bytes, 0), copyTotal: status.reduce((n, s) => n + s.total, 0) };
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}
