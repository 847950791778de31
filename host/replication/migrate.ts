/**
 * Live migration (pre-copy): copy every page while the machine runs, then again what changed,
 * round after round, until what is left should fit the allowed downtime (or an iteration limit);
 * then stop the machine, send the rest with the device state, and hand over. The destination is a
 * `standby()`: the rounds reach it as checkpoints without device state (so it can never take over
 * from a half-copied image), the last one complete, then HANDOVER.
 */

import { ErrorCode, TandemError } from "../errors.ts";
import type { Machine } from "../machine/machine.ts";
import { PAGE_SIZE } from "../memory/guest-memory.ts";
import { startOperation, type OpHandle } from "../ops/operation.ts";
import { TransactionSender, type SenderOptions } from "../protocol/sender.ts";
import { StreamWriter } from "../protocol/stream/writer.ts";
import type { Transport } from "../protocol/transport.ts";
import { MemoryCapture, captureDiskWrites, captureWholeDisks, type DiskWrite } from "./capture.ts";
import { peerCall, sendStreamHeader, sendTransaction } from "./peer-calls.ts";
import { streamHeaderFor } from "./stream-guest.ts";
import type { ReleasedOutput } from "./primary.ts";

/** Options of {@link migrate}. */
export interface MigrateOptions {
  /** The longest the machine may stand still (ms): rounds go on until what is left fits. Default 30. */
  maxDowntimeMs?: number;
  /** Rounds before giving up on converging. Default 30. */
  maxIterations?: number;
  /** At the limit, fail (the machine runs on here) instead of stopping anyway. Default false. */
  strict?: boolean;
  /** Where the machine's outputs go while it still runs here (with sequence numbers). */
  release?: (output: ReleasedOutput) => void;
  /** Called while the machine is stopped for the last round, after its state was captured. */
  onStopped?: () => void;
  /** Cancels the migration before the machine stops: it runs on here, the destination stands down. */
  signal?: AbortSignal;
  /** Options of the transaction sender. */
  sender?: SenderOptions;
}

/** How a migration went. */
export interface MigrationResult {
  /** Rounds while running (the final, stopped one not counted). */
  iterations: number;
  /** Whether what was left fitted the downtime before the limit. */
  converged: boolean;
  /** From start to the destination running. */
  totalMs: number;
  /** From stopping the machine to the destination running (its ACK of the handover). */
  downtimeMs: number;
  /** Stream bytes and pages sent. */
  bytes: number;
  pages: number;
}

/**
 * Migrates `machine` to the destination at the other end of `transport`. On success the machine
 * here is stopped for good (the destination runs it now). Cancelled or failed before the stop,
 * it runs on here. If the connection fails after the stop, whether the destination took over is
 * unknown: the machine is left stopped and the error (E_PEER_LOST) says so.
 */
export function migrate(machine: Machine, transport: Transport, options: MigrateOptions = {}): OpHandle<MigrationResult> {
  const maxDowntimeMs = options.maxDowntimeMs ?? 30;
  const maxIterations = options.maxIterations ?? 30;
  if (!(maxDowntimeMs >= 0) || !Number.isInteger(maxIterations) || maxIterations < 1) {
    throw new TandemError(ErrorCode.BadArgument, `maxDowntimeMs ${maxDowntimeMs} and maxIterations ${maxIterations}`);
  }
  const release = options.release ?? (() => {});
  return startOperation("migrate", async (ctx) => {
    const started = performance.now();
    const sender = new TransactionSender(transport, options.sender);
    const memory = new MemoryCapture(machine);
    const writer = new StreamWriter(streamHeaderFor(machine));
    let released: ReleasedOutput[] = [];
    let diskWrites: DiskWrite[] = [];
    let seq = 0;
    let bytes = 0;
    let pages = 0;
    let iterations = 0;
    let stopped = false;
    // The machine runs here until the stop: its outputs go out now, and ride along so the
    // destination can continue the sequence.
    machine.onOutput((o) => {
      const out = { seq: ++seq, channel: o.channel, data: o.data.slice() };
      release(out);
      released.push(out);
    });
    machine.onDiskWrite((disk, offset, data) => diskWrites.push({ disk, offset, data: data.slice() }));
    const round = async (final: boolean): Promise<number> => {
      const captured = memory.capture(writer);
      if (final) writer.deviceState(0, machine.saveDevices());
      if (iterations === 0 && !final) captureWholeDisks(machine, writer);
      else captureDiskWrites(machine, diskWrites, writer);
      diskWrites = [];
      writer.outputs(released);
      released = [];
      writer.checkpointEnd(iterations + 1, 0);
      const data = writer.takeView(); // sent and acknowledged before the next round writes again
      if (final) options.onStopped?.();
      const sent = performance.now();
      await peerCall("destination", sendTransaction(sender, data));
      bytes += data.length;
      pages += captured.pages;
      ctx.report({ phase: final ? "handing over" : "iterating", iterations, bytes, pages });
      return data.length / Math.max(performance.now() - sent, 0.01); // bytes per ms
    };
    try {
      await peerCall("destination", sender.open());
      await sendStreamHeader(sender, writer, "destination", machine.identity);
      memory.arm();
      let converged = false;
      for (;;) {
        ctx.throwIfAborted();
        const before = pages;
        const rate = await round(false);
        iterations++;
        // What the next round must send is about what this one found dirty.
        const leftMs = ((pages - before) * PAGE_SIZE) / rate;
        if (iterations > 1 && leftMs <= maxDowntimeMs) {
          converged = true;
          break;
        }
        if (iterations >= maxIterations) {
          if (options.strict) {
            throw new TandemError(ErrorCode.Failed, `did not converge in ${iterations} rounds: about ${Math.round(leftMs)} ms of pages keep changing, more than the ${maxDowntimeMs} ms allowed`);
          }
          break;
        }
      }
      ctx.throwIfAborted();
      const stopAt = performance.now();
      await machine.pause();
      stopped = true;
      await round(true);
      writer.handover();
      await peerCall("destination", sender.atomic(writer.take()));
      const done = performance.now();
      return { iterations, converged, totalMs: done - started, downtimeMs: done - stopAt, bytes, pages };
    } catch (error) {
      if (!stopped && sender.error === undefined) {
        writer.end(); // the destination stands down; the machine runs on here
        await sender.atomic(writer.take()).catch(() => {});
      }
      if (stopped && error instanceof TandemError && error.code === ErrorCode.PeerLost) {
        throw new TandemError(ErrorCode.PeerLost, `${error.message}; the machine was already stopped for the handover, and whether the destination took over is unknown: it is left stopped here, resume it only if the destination is not running`);
      }
      throw error;
    } finally {
      sender.close();
      machine.onOutput(() => {});
      machine.onDiskWrite(() => {});
      if (!stopped && !machine.running) await machine.resume();
    }
  }, { signal: options.signal });
}
