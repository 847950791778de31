/**
 * The metrics of one host of a replicated pair (`tandem primary`, `tandem secondary`), fed by
 * the pair's callbacks (replication/pair.ts): each committed checkpoint's statistics, each
 * notice of a new state, each takeover, each checkpoint a standby applied. Names follow
 * Prometheus' conventions: base units (seconds, bytes), `_total` for counters.
 *
 * A host changes role over its life (a secondary that took over is a primary): the same
 * metrics go on, so `tandem_checkpoints_total` on a secondary counts what it committed after
 * its takeover, and `tandem_standby_checkpoints_applied_total` on a primary what it applied
 * while it was fenced and standing by.
 */

import { Counter, Gauge, Histogram } from "prom-client";
import { PairState } from "../replication/pair-state.ts";
import type { PairNotice } from "../replication/pair.ts";
import type { CheckpointStats } from "../replication/primary.ts";
import type { StandbyResult } from "../replication/secondary.ts";
import { ProcessMetrics } from "./process-metrics.ts";
import type { PairStatus, StatusReport } from "./status-report.ts";

/** Pause and commit buckets (seconds): Remus's epochs are 25 ms; a pause past a second is an incident. */
const PAUSE_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];
/** Bytes per checkpoint: 4 KiB to 256 MiB, by fours. */
const BYTE_BUCKETS = Array.from({ length: 9 }, (_, i) => 4096 * 4 ** i);
/** Dirty pages per checkpoint: none to 256 Ki pages (1 GiB of 4 KiB pages), by fours. */
const PAGE_BUCKETS = [0, ...Array.from({ length: 10 }, (_, i) => 4 ** i)];
/** A pair with no checkpoint for this many intervals (and at least a second) is reported stalled. */
const STALE_INTERVALS = 40;

/** One pair host's metrics. */
export class PairMetrics extends ProcessMetrics {
  readonly #intervalMs: number;
  #state: PairStatus["state"] = "starting";
  #generation = 0;
  #takeovers = 0;
  #checkpoints = 0;
  #lastCheckpoint: number | null = null;
  #lastCheckpointAt: number | null = null;
  #lastPauseMs: number | null = null;
  #pauseSumMs = 0;
  #heldOutputBytes = 0;
  #diskCopy: PairStatus["diskCopy"] = [];
  #applied = 0;
  #lastAppliedAt: number | null = null;

  readonly #stateGauge: Gauge<"state">;
  readonly #protected: Gauge;
  readonly #generationGauge: Gauge;
  readonly #takeoverCount: Counter;
  readonly #failover: Gauge;
  readonly #checkpointCount: Counter;
  readonly #pause: Histogram;
  readonly #commit: Histogram;
  readonly #bytes: Histogram;
  readonly #sent: Counter;
  readonly #pages: Histogram;
  readonly #held: Gauge;
  readonly #lastCommitted: Gauge;
  readonly #diskCopied: Gauge<"disk">;
  readonly #diskSize: Gauge<"disk">;
  readonly #diskDone: Gauge<"disk">;
  readonly #appliedCount: Counter;
  readonly #apply: Histogram;

  /** `intervalMs`: the checkpoint interval, which says when a pair counts as stalled. */
  constructor(kind: "primary" | "secondary", intervalMs: number) {
    super(kind);
    this.#intervalMs = intervalMs;
    const registers = [this.registry];
    this.#stateGauge = new Gauge({ name: "tandem_pair_state", help: "1 for the state this host of the pair is in, 0 for the others.", labelNames: ["state"], registers });
    this.#protected = new Gauge({ name: "tandem_pair_protected", help: "1 while a standby holds a whole checkpoint, disks included, and may take over; else 0.", registers });
    this.#generationGauge = new Gauge({ name: "tandem_pair_generation", help: "The pair's generation, which rises with each new standby and each takeover.", registers });
    this.#takeoverCount = new Counter({ name: "tandem_takeovers_total", help: "Takeovers this host made (standby to running the guest).", registers });
    this.#failover = new Gauge({ name: "tandem_failover_seconds", help: "The last takeover: from detecting the loss of the primary to the guest running here.", registers });
    this.#checkpointCount = new Counter({ name: "tandem_checkpoints_total", help: "Checkpoints committed (acknowledged by the standby) while this host was primary.", registers });
    this.#pause = new Histogram({ name: "tandem_checkpoint_pause_seconds", help: "How long the guest stood still for each checkpoint.", buckets: PAUSE_BUCKETS, registers });
    this.#commit = new Histogram({ name: "tandem_checkpoint_commit_seconds", help: "From a checkpoint's pause to the standby's acknowledgement (outputs wait this long).", buckets: PAUSE_BUCKETS, registers });
    this.#bytes = new Histogram({ name: "tandem_checkpoint_bytes", help: "Stream bytes sent per checkpoint.", buckets: BYTE_BUCKETS, registers });
    this.#sent = new Counter({ name: "tandem_checkpoint_sent_bytes_total", help: "Stream bytes sent in committed checkpoints.", registers });
    this.#pages = new Histogram({ name: "tandem_checkpoint_dirty_pages", help: "Pages that changed per checkpoint.", buckets: PAGE_BUCKETS, registers });
    this.#held = new Gauge({ name: "tandem_held_output_bytes", help: "Output bytes held, waiting for a checkpoint to commit, at the last acknowledgement.", registers });
    this.#lastCommitted = new Gauge({ name: "tandem_last_checkpoint", help: "The number of the last checkpoint committed.", registers });
    this.#diskCopied = new Gauge({ name: "tandem_disk_copy_bytes", help: "The standby's initial disk copy: bytes sent so far.", labelNames: ["disk"], registers });
    this.#diskSize = new Gauge({ name: "tandem_disk_copy_size_bytes", help: "The standby's initial disk copy: bytes to send in all.", labelNames: ["disk"], registers });
    this.#diskDone = new Gauge({ name: "tandem_disk_copy_done", help: "1 once the standby holds the disk whole.", labelNames: ["disk"], registers });
    this.#appliedCount = new Counter({ name: "tandem_standby_checkpoints_applied_total", help: "Checkpoints applied while this host stood by.", registers });
    this.#apply = new Histogram({ name: "tandem_standby_apply_seconds", help: "How long applying a committed checkpoint took on the standby.", buckets: PAUSE_BUCKETS, registers });
    for (const state of Object.values(PairState)) this.#stateGauge.set({ state }, 0);
    this.#protected.set(0);
    this.#generationGauge.set(0);
  }

  /** A checkpoint committed (the pair's `replicate.onCommitted`). */
  readonly checkpoint = (stats: CheckpointStats): void => {
    this.#checkpoints++;
    this.#lastCheckpoint = stats.checkpoint;
    this.#lastCheckpointAt = Date.now();
    this.#lastPauseMs = stats.pauseMs;
    this.#pauseSumMs += stats.pauseMs;
    this.#heldOutputBytes = stats.heldOutputBytes;
    this.#diskCopy = stats.diskCopy.map((c, disk) => ({ disk, mode: c.mode, bytes: c.bytes, total: c.total, done: c.done }));
    this.#checkpointCount.inc();
    this.#pause.observe(stats.pauseMs / 1000);
    this.#commit.observe(stats.commitMs / 1000);
    this.#bytes.observe(stats.bytes);
    this.#sent.inc(stats.bytes);
    this.#pages.observe(stats.pages);
    this.#held.set(stats.heldOutputBytes);
    this.#lastCommitted.set(stats.checkpoint);
    for (const c of this.#diskCopy) {
      const disk = String(c.disk);
      this.#diskCopied.set({ disk }, c.bytes);
      this.#diskSize.set({ disk }, c.total);
      this.#diskDone.set({ disk }, c.done ? 1 : 0);
    }
  };

  /** The pair's state changed (the pair's `onNotice`). */
  readonly notice = (notice: PairNotice): void => {
    if (this.#state !== "starting") this.#stateGauge.set({ state: this.#state }, 0);
    this.#state = notice.state;
    this.#generation = notice.generation;
    this.#stateGauge.set({ state: notice.state }, 1);
    this.#protected.set(notice.state === PairState.Protected ? 1 : 0);
    this.#generationGauge.set(notice.generation);
  };

  /** This host took over (the pair's `onTakeover`). */
  readonly takeover = (result: StandbyResult): void => {
    this.#takeovers++;
    this.#takeoverCount.inc();
    if (result.failoverMs !== undefined) this.#failover.set(result.failoverMs / 1000);
  };

  /**
   * As a standby, a checkpoint applied in `applyMs` (the standby's `onApplied`). Its generation is
   * the pair's as this side knows it (the state machine's notices give a standby only the lowest
   * generation it accepts).
   */
  readonly applied = (applied: { checkpoint: number; generation: number; applyMs: number }): void => {
    this.#generation = applied.generation;
    this.#generationGauge.set(applied.generation);
    this.#applied++;
    this.#lastAppliedAt = Date.now();
    this.#appliedCount.inc();
    this.#apply.observe(applied.applyMs / 1000);
  };

  override status(): StatusReport {
    const now = Date.now();
    return {
      ...super.status(),
      pair: {
        state: this.#state,
        protected: this.#state === PairState.Protected,
        generation: this.#generation,
        takeovers: this.#takeovers,
        checkpoints: this.#checkpoints,
        lastCheckpoint: this.#lastCheckpoint,
        lastCheckpointAgeSeconds: this.#lastCheckpointAt === null ? null : (now - this.#lastCheckpointAt) / 1000,
        staleAfterSeconds: Math.max(1, (STALE_INTERVALS * this.#intervalMs) / 1000),
        lastPauseMs: this.#lastPauseMs,
        meanPauseMs: this.#checkpoints === 0 ? null : this.#pauseSumMs / this.#checkpoints,
        heldOutputBytes: this.#heldOutputBytes,
        diskCopy: this.#diskCopy,
        applied: this.#applied,
        lastAppliedAgeSeconds: this.#lastAppliedAt === null ? null : (now - this.#lastAppliedAt) / 1000,
      },
    };
  }
}
