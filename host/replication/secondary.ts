/**
 * The standby side of continuous replication: keeps a replica of the primary's machine, paused,
 * applying each checkpoint only once its transaction commits (and then all of it or nothing),
 * and takes over when the primary is lost. docs/replication.md states the guarantees.
 */

import { ErrorCode, TandemError } from "../errors.ts";
import type { Machine } from "../machine/machine.ts";
import { startOperation, type OpHandle } from "../ops/operation.ts";
import { PageDeltaCodec } from "../protocol/page-delta.ts";
import { TransactionReceiver, type ReceiverOptions } from "../protocol/receiver.ts";
import { StreamReader } from "../protocol/stream/reader.ts";
import type { Transport } from "../protocol/transport.ts";
import { applyCheckpoint, type AppliedCheckpoint } from "./apply-checkpoint.ts";
import { StandbyDisks, type DiskReplica } from "./disk-replica.ts";
import type { ReleasedOutput } from "./primary.ts";
import { checkStreamGuest } from "./stream-guest.ts";

/** Receiver errors that mean the connection broke (the primary died), not that it misbehaved. */
const TAKEOVER_CODES: ReadonlySet<string> = new Set([
  ErrorCode.PeerClosed, ErrorCode.RecvHeader, ErrorCode.RecvPayload, ErrorCode.SendHeader, ErrorCode.Timeout,
]);

/** Options of {@link standby}. */
export interface StandbyOptions {
  /**
   * Take over when nothing arrived for this long (ms), once a first checkpoint is held. Default
   * 1000 (Remus).
   */
  heartbeatTimeoutMs?: number;
  /** Refuse checkpoints of a lower generation than this; it rises with each one applied. Default 0. */
  minGeneration?: number;
  /** Where outputs go after a takeover, with sequence numbers continuing the primary's. */
  release?: (output: ReleasedOutput) => void;
  /**
   * Asked before taking over, with the generation of the checkpoint held: may this side run? With
   * a witness this wins the guest's key by compare-and-swap on that generation (host/witness/).
   * If it resolves false the machine stays paused, holding that checkpoint, and the result is
   * "declined". Default: yes (Remus: silence means the primary is dead).
   */
  claim?: (generation: number) => Promise<boolean>;
  /** Resume the machine on takeover. Default true (false leaves it paused, e.g. to inspect it). */
  resume?: boolean;
  /** Cancels standing by: the replica stays paused and consistent; nothing takes over. */
  signal?: AbortSignal;
  /** Options of the transaction receiver. */
  receiver?: ReceiverOptions;
  /** Told of each checkpoint applied, its generation, and how long applying it took (for metrics). */
  onApplied?: (applied: { checkpoint: number; generation: number; applyMs: number }) => void;
  /**
   * Image files for the machine's disks, by index (each the machine's disk): checkpoints are
   * applied to them through a journal and recorded beside them. Disks without one are written
   * directly (in-memory disks).
   */
  disks?: readonly (DiskReplica | undefined)[];
}

/** What happened when the standby stopped standing by. */
export interface StandbyResult {
  /**
   * "takeover": the primary was lost and this machine now runs; "stopped": the primary stood it
   * down, and the machine, still paused, holds the last checkpoint whole (devices included);
   * "declined": the primary was lost but `claim` said no (it may live on, cut off from here).
   */
  outcome: "takeover" | "stopped" | "declined";
  /** Why it took over: the primary was lost ("closed", "heartbeat"), or a migration handed over. */
  reason?: "closed" | "heartbeat" | "handover";
  /** The checkpoint the machine holds (0 if none). */
  checkpoint: number;
  /** That checkpoint's generation; a takeover should replicate onwards with a higher one. */
  generation: number;
  /** Milliseconds from detecting the loss to the machine running (takeover only). */
  failoverMs?: number;
  /** The highest output seq released or held so far: a primary continuing from here seals after it. */
  lastSeq: number;
}

/**
 * Stands by with `machine` (configured like the primary's) at the end of `transport`. Resolves
 * on a takeover (the machine then runs, unless `resume: false`) or when the primary stands it
 * down; rejects E_GUEST_MISMATCH (naming what differs) or E_STREAM_FORMAT (another memory
 * layout) at connect if the primary's guest is not this machine's, having applied nothing;
 * E_PEER_LOST if the primary was lost before a first checkpoint, E_ABORTED if
 * cancelled.
 */
export function standby(machine: Machine, transport: Transport, options: StandbyOptions = {}): OpHandle<StandbyResult> {
  const heartbeatMs = options.heartbeatTimeoutMs ?? 1000;
  const release = options.release ?? (() => {});
  return startOperation("standby", async (ctx) => {
    await machine.pause(); // the replica never runs while the primary lives
    const reader = new StreamReader();
    const codec = new PageDeltaCodec();
    const disks = new StandbyDisks(machine.disks, options.disks);
    let diskFailure: TandemError | undefined;
    let last: AppliedCheckpoint | undefined;
    let devices: Uint8Array | undefined;
    let generation = options.minGeneration ?? 0;
    let seq = 0;
    let stoppedOnPurpose = false;
    let lost!: (reason: "closed" | "heartbeat" | "handover") => void;
    const primaryLost = new Promise<"closed" | "heartbeat" | "handover">((resolve) => (lost = resolve));
    let handover: { accept(): void; refuse(error: Error): void } | undefined;
    // The primary is alive while bytes keep coming (a big checkpoint may take longer than the
    // timeout). Polled every quarter timeout: loss is declared 1 to 1.25 timeouts after the last
    // byte. It counts only once a checkpoint is held: before that there is nothing to take over,
    // and a primary that is slow to start is not a dead one (a closed connection still ends it).
    let heard = -1;
    let heardAt = performance.now();
    const heartbeat = setInterval(() => {
      if (!last) {
        heardAt = performance.now();
      } else if (receiver.stats.bytes !== heard) {
        heard = receiver.stats.bytes;
        heardAt = performance.now();
      } else if (performance.now() - heardAt >= heartbeatMs) {
        lost("heartbeat");
      }
    }, Math.max(1, heartbeatMs / 4));
    let broken: TandemError | undefined;
    // The first transaction is the stream header alone: a guest this machine is not is refused
    // (NACK) before anything is applied, and the standby stops with the reason.
    let guestChecked = false;
    let refused: unknown;

    const receiver = new TransactionReceiver(transport, (txn) => {
      const records = reader.read(txn.bytes());
      if (!guestChecked) {
        try {
          checkStreamGuest(reader.header!, machine, "primary", "standby");
        } catch (error) {
          refused = error;
          setTimeout(() => lost("closed"), 0); // after the NACK has gone out
          throw error;
        }
        guestChecked = true;
      }
      if (records.length === 0) return; // the header alone
      if (records.length === 1 && records[0].type === "end") {
        stoppedOnPurpose = true;
        setTimeout(() => lost("closed"), 0); // after the ACK has gone out
        return;
      }
      if (records.length === 1 && records[0].type === "handover") {
        // Take over now, and ACK only once running: the source measures its downtime by this ACK.
        return new Promise<void>((accept, refuse) => {
          handover = { accept, refuse };
          lost("handover");
        });
      }
      if (records[0].type.startsWith("disk-sync")) {
        onDisk(() => disks.applySync(records));
        ctx.report({ phase: "copying disks", copied: disks.progress().reduce((n, p) => n + p.bytes, 0), bytes: receiver.stats.bytes });
        return;
      }
      const end = records[records.length - 1];
      if (end?.type === "checkpoint-end" && end.generation < generation) {
        throw new TandemError(ErrorCode.Failed, `checkpoint of generation ${end.generation}; this standby is fenced at ${generation}`);
      }
      const applyStarted = performance.now();
      const applied = onDisk(() => applyCheckpoint(machine, records, codec, devices, disks)); // all or nothing
      options.onApplied?.({ checkpoint: applied.checkpoint, generation: applied.generation, applyMs: performance.now() - applyStarted });
      last = applied;
      generation = applied.generation;
      devices = applied.devices ?? devices;
      for (const o of applied.outputs) seq = Math.max(seq, o.seq);
      seq = Math.max(seq, applied.lastSeq ?? 0); // a standby that joined a running guest continues its sequence
      ctx.report({ phase: disks.protected ? "standing by" : "copying disks", checkpoints: applied.checkpoint, bytes: receiver.stats.bytes });
    }, options.receiver);
    /** Runs a step that writes the images: an image that fails (full, read-only) ends standing by. */
    function onDisk<T>(step: () => T): T {
      try {
        return step();
      } catch (error) {
        if (error instanceof TandemError && error.code.startsWith("E_DISK_")) {
          diskFailure ??= error;
          setTimeout(() => lost("closed"), 0); // after the refusal has gone out
        }
        throw error;
      }
    }
    receiver.done.then(() => lost("closed"), (error: TandemError) => {
      // A connection that broke is a primary that died; a primary that broke the protocol may be alive.
      if (!TAKEOVER_CODES.has(error.code)) broken = error;
      lost("closed");
    });
    const cancel = () => lost("closed");
    ctx.signal.addEventListener("abort", cancel, { once: true });
    receiver.open();

    const reason = await primaryLost;
    const detected = performance.now();
    clearInterval(heartbeat);
    ctx.signal.removeEventListener("abort", cancel);
    const hangUp = () => setTimeout(() => receiver.close(), 0); // after the handover's answer
    if (!handover) receiver.close();
    if (ctx.signal.aborted || (handover && (!last || !devices))) {
      handover?.refuse(new Error("no complete checkpoint to take over from"));
      hangUp();
    }
    ctx.throwIfAborted();
    if (refused) throw refused;
    if (stoppedOnPurpose) {
      // Stood down: the machine stays paused, but holds the last checkpoint whole, devices too.
      if (devices) machine.restoreDevices(devices);
      return { outcome: "stopped", checkpoint: last?.checkpoint ?? 0, generation, lastSeq: seq };
    }
    if (diskFailure) {
      throw new TandemError(diskFailure.code, `this standby's image failed (${diskFailure.message}); not standing by any more, the primary runs on unprotected`);
    }
    if (broken) {
      throw new TandemError(ErrorCode.Failed, `the primary broke the protocol (${broken.message}); not taking over, the replica holds checkpoint ${last?.checkpoint ?? 0}`);
    }
    if (!last || !devices) {
      throw new TandemError(ErrorCode.PeerLost, "the primary was lost before its first checkpoint arrived: there is nothing to take over");
    }
    // A migration's first round carries the disks whole, so a handover needs no background copy.
    if (reason !== "handover" && !disks.protected) {
      throw new TandemError(ErrorCode.PeerLost, `the primary was lost before the pair was protected (${disks.whyNotProtected()}): not taking over, this standby's disks are not the guest's`);
    }
    if (options.claim && !(await options.claim(last.generation))) {
      machine.restoreDevices(devices); // paused, but whole: ready to stand by again
      return { outcome: "declined", reason, checkpoint: last.checkpoint, generation: last.generation, lastSeq: seq };
    }
    // Take over: the last committed checkpoint's devices, and its outputs again (the primary may
    // not have lived to release them; the outside world keeps each seq once).
    machine.restoreDevices(devices);
    disks.tookOver();
    for (const o of last.outputs) release(o);
    machine.onOutput((o) => release({ seq: ++seq, channel: o.channel, data: o.data }));
    machine.onDiskWrite(() => {});
    if (options.resume ?? true) await machine.resume();
    if (handover) {
      handover.accept(); // the handover's ACK goes out: the source may now be destroyed
      hangUp();
    }
    return {
      outcome: "takeover",
      reason,
      checkpoint: last.checkpoint,
      generation: last.generation,
      failoverMs: performance.now() - detected,
      lastSeq: seq,
    };
  }, { signal: options.signal });
}
