/**
 * Saving a machine to a file and restoring it, in the checkpoint stream format: the header, one
 * complete checkpoint (every page, the device state, whole disks), and END; then the CRC-32C of
 * each part (saved-image.ts), checked on restore.
 */

import { readFile, rename, rm, writeFile } from "node:fs/promises";
import { ErrorCode, TandemError } from "../errors.ts";
import type { Machine } from "../machine/machine.ts";
import { startOperation, type OpHandle } from "../ops/operation.ts";
import { PageDeltaCodec } from "../protocol/page-delta.ts";
import { StreamReader } from "../protocol/stream/reader.ts";
import { StreamWriter } from "../protocol/stream/writer.ts";
import { applyCheckpoint } from "./apply-checkpoint.ts";
import { checkedStream, withChecksums } from "./saved-image.ts";
import { captureAllMemory, captureWholeDisks } from "./capture.ts";
import { checkStreamGuest, streamHeaderFor } from "./stream-guest.ts";

/** What a save wrote. */
export interface SaveResult {
  bytes: number;
  pages: number;
  zeroPages: number;
  /** How long the machine stood still. */
  pauseMs: number;
}

/**
 * Saves `machine` to `path`: it is paused while its state is captured, then resumed if it was
 * running (or left stopped with `stop: true`). The file is written beside `path` and renamed
 * over it, so `path` holds either the old image or the whole new one, never a torn one.
 */
export function save(machine: Machine, path: string, options: { stop?: boolean; signal?: AbortSignal } = {}): OpHandle<SaveResult> {
  return startOperation("save", async (ctx) => {
    const wasRunning = machine.running;
    const writer = new StreamWriter(streamHeaderFor(machine));
    const started = performance.now();
    await machine.pause();
    let captured: { pages: number; zeroPages: number };
    let headerLength = 0;
    try {
      writer.writeHeader();
      headerLength = writer.length;
      captured = captureAllMemory(machine, writer);
      writer.deviceState(0, machine.saveDevices());
      captureWholeDisks(machine, writer);
      writer.checkpointEnd(1, 0);
      writer.end();
    } finally {
      if (wasRunning && !options.stop) await machine.resume();
    }
    const pauseMs = performance.now() - started;
    // Checksummed after the machine runs again: it costs no pause.
    const bytes = withChecksums(writer.take(), headerLength);
    ctx.report({ phase: "writing", bytes: bytes.length, pages: captured.pages });
    ctx.throwIfAborted();
    const temporary = `${path}.tandem-partial`;
    try {
      await writeFile(temporary, bytes);
      await rename(temporary, path);
    } catch (error) {
      await rm(temporary, { force: true }).catch(() => {}); // never mask the write's own error
      throw new TandemError(ErrorCode.Failed, `cannot write ${path}: ${(error as Error).message}`);
    }
    return { bytes: bytes.length, pages: captured.pages, zeroPages: captured.zeroPages, pauseMs };
  }, { signal: options.signal });
}

/**
 * Restores `machine` (configured like the saved one, paused) from `path`, then resumes it unless
 * `resume: false`. A file that is not a whole, valid image is refused with a coded error and the
 * machine is left as it was.
 */
export function restore(machine: Machine, path: string, options: { resume?: boolean; signal?: AbortSignal } = {}): OpHandle<{ checkpoint: number }> {
  return startOperation("restore", async (ctx) => {
    let bytes: Uint8Array;
    try {
      bytes = await readFile(path);
    } catch (error) {
      throw new TandemError(ErrorCode.BadArgument, `cannot read ${path}: ${(error as Error).message}`);
    }
    ctx.throwIfAborted();
    const reader = new StreamReader();
    const records = reader.read(checkedStream(bytes, path));
    if (records[records.length - 1]?.type !== "end") {
      throw new TandemError(ErrorCode.StreamFormat, `${path} does not end with END: it is cut short, or not a saved image`);
    }
    checkStreamGuest(reader.header!, machine, "image", "machine");
    await machine.pause();
    const applied = applyCheckpoint(machine, records.slice(0, -1), new PageDeltaCodec());
    if (!applied.devices) throw new TandemError(ErrorCode.StreamFormat, `${path} holds no device state`);
    machine.restoreDevices(applied.devices);
    ctx.report({ phase: "restored", bytes: bytes.length, checkpoints: 1 });
    if (options.resume ?? true) await machine.resume();
    return { checkpoint: applied.checkpoint };
  }, { signal: options.signal });
}
