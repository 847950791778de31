/**
 * The primary side of continuous replication (Remus, Kemari): every interval the machine is
 * paused, what changed is captured, the machine resumes at once (speculative execution), and the
 * capture goes to the standby as one transaction. Outputs of each epoch are held until its
 * checkpoint is acknowledged: the outside world never sees an output the standby could not
 * reproduce. docs/replication.md states the guarantees.
 */

import { ErrorCode, TandemError } from "../errors.ts";
import type { Machine, MachineOutput } from "../machine/machine.ts";
import { PAGE_SIZE } from "../memory/guest-memory.ts";
import { startOperation, type OpHandle } from "../ops/operation.ts";
import { TransactionSender, type SenderOptions } from "../protocol/sender.ts";
import { StreamWriter } from "../protocol/stream/writer.ts";
import type { Transport } from "../protocol/transport.ts";
import { MemoryCapture, captureDiskWrites, captureWholeDisks, type DiskWrite } from "./capture.ts";
import { peerCall, sendTransaction } from "./peer-calls.ts";

/** The standby's answers, as replication reads them. */
function standbyCall<T>(call: Promise<T>): Promise<T> {
  return peerCall("standby", call, "; is it fenced to a newer generation?");
}

/** An output released to the outside world, with its sequence number (keep each seq once). */
export interface ReleasedOutput {
  seq: number;
  channel: string;
  data: Uint8Array;
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
  /** From the pause to the standby's ACK. */
  commitMs: number;
  /** The highest output seq committed so far (this checkpoint's outputs are released now). */
  lastSeq: number;
  /** Output bytes held when the ACK came (this checkpoint's and the running epoch's). */
  heldOutputBytes: number;
}

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
  /** Where committed outputs go, in seq order. Default: dropped. */
  release?: (output: ReleasedOutput) => void;
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
}

/**
 * Replicates `machine` to the standby at the other end of `transport`. It never resolves: it ends
 * when cancelled (rejecting E_ABORTED) or when the standby is lost (E_PEER_LOST), or refuses
 * (E_FAILED). Either way the machine is left running, and outputs held for checkpoints that will
 * never be acknowledged are released: with no standby to take over, this machine is the only copy.
 * Progress reports count checkpoints, bytes and pages.
 */
export function replicate(machine: Machine, transport: Transport, options: ReplicateOptions = {}): OpHandle<never> {
  const intervalMs = options.intervalMs ?? 25;
  const generation = options.generation ?? 1;
  if (!(intervalMs >= 0) || !Number.isSafeInteger(generation) || generation < 0) {
    throw new TandemError(ErrorCode.BadArgument, `intervalMs ${intervalMs} and generation ${generation}: expected non-negative numbers`);
  }
  const release = options.release ?? (() => {});
  return startOperation("replicate", async (ctx) => {
    const sender = new TransactionSender(transport, options.sender);
    const memory = new MemoryCapture(machine, { compression: options.compression });
    const writer = new StreamWriter({ pageSize: PAGE_SIZE, regions: machine.memory.map((m) => ({ size: m.size })) });
    let epochOutputs: MachineOutput[] = [];
    let epochDiskWrites: DiskWrite[] = [];
    let unacknowledged: ReleasedOutput[] = [];
    let seq = 0;
    let checkpoint = 0;
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
      if (checkpoint === 0) sender.close();
    };
    ctx.signal.addEventListener("abort", stop, { once: true });
    try {
      await standbyCall(sender.open());
      writer.writeHeader();
      memory.arm(); // before the first copy: no write is lost
      for (;;) {
        ctx.throwIfAborted();
        const started = performance.now();
        await machine.pause();
        checkpoint++;
        const { pages, zeroPages, deltaPages } = memory.capture(writer);
        writer.deviceState(0, machine.saveDevices());
        // The first checkpoint carries whole disks; writes made before it are in them.
        if (checkpoint === 1) captureWholeDisks(machine, writer);
        else captureDiskWrites(machine, epochDiskWrites, writer);
        const sealed = epochOutputs.map((o) => ({ seq: ++seq, channel: o.channel, data: o.data }));
        epochOutputs = [];
        epochDiskWrites = [];
        writer.outputs(sealed);
        writer.checkpointEnd(checkpoint, generation);
        const bytes = writer.take();
        options.onSuspended?.(checkpoint);
        if (!throttled) await machine.resume();
        options.onResumed?.(checkpoint);
        const pauseMs = performance.now() - started;
        unacknowledged = sealed;
        await standbyCall(sendTransaction(sender, bytes));
        unacknowledged = [];
        totalBytes += bytes.length;
        totalPages += pages;
        const stats = {
          checkpoint, pauseMs, pages, zeroPages, deltaPages, bytes: bytes.length, commitMs: performance.now() - started,
          lastSeq: seq, heldOutputBytes: held,
        };
        options.onCommitted?.(stats);
        for (const o of sealed) {
          release(o); // acknowledged: the standby can reproduce them now
          held -= o.data.length;
        }
        if (throttled && held <= maxHeld) {
          throttled = false;
          await machine.resume();
        }
        ctx.report({ phase: "replicating", checkpoints: checkpoint, bytes: totalBytes, pages: totalPages });
        const wait = started + intervalMs - performance.now();
        if (wait > 0) await sleep(wait, ctx.signal);
      }
    } catch (error) {
      if (ctx.signal.aborted && sender.error === undefined) {
        writer.take(); // whatever a cut-short capture left
        writer.end();
        await sender.atomic(writer.take()).catch(() => {}); // best effort: it may have gone meanwhile
      }
      throw error;
    } finally {
      ctx.signal.removeEventListener("abort", stop);
      sender.close();
      // Alone now: what was held goes out, and from here on outputs go out as they come.
      for (const o of [...unacknowledged, ...epochOutputs.map((e) => ({ seq: ++seq, channel: e.channel, data: e.data }))]) release(o);
      machine.onOutput((o) => release({ seq: ++seq, channel: o.channel, data: o.data }));
      machine.onDiskWrite(() => {});
      if (!machine.running) await machine.resume();
    }
  }, { signal: options.signal });
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
