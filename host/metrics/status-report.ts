/**
 * What a long-running tandem process says about itself at `GET /status` (metrics-server.ts) and
 * `tandem status` prints: what it is, and for each kind where it stands. Every figure is one the
 * process measured; a pair's state is the state machine's own value (replication/pair-state.ts),
 * and the age of the last checkpoint is given beside it so that a reader can see a pair that
 * says "protected" but has stopped checkpointing.
 */

import type { PairState } from "../replication/pair-state.ts";

/** The kinds of process that serve a status. */
export type ProcessKind = "primary" | "secondary" | "serve" | "xenstored";

/** The report. */
export interface StatusReport {
  kind: ProcessKind;
  pid: number;
  /** tandem's version. */
  version: string;
  /** "node 22.1.0", "deno 2.5.6", "bun 1.3.0". */
  runtime: string;
  /** When it started (ISO 8601) and how long ago, in seconds. */
  startedAt: string;
  uptimeSeconds: number;
  pair?: PairStatus;
  nbd?: NbdStatus;
  xenstore?: XenStoreStatus;
}

/** A host of a replicated pair (`primary`, `secondary`). */
export interface PairStatus {
  /** Where it stands now; "starting" before the pair's first event. */
  state: PairState | "starting";
  /** True only in the protected state: a standby holds a whole checkpoint, disks included. */
  protected: boolean;
  generation: number;
  takeovers: number;
  /** Checkpoints this host committed as primary (acknowledged by a standby). */
  checkpoints: number;
  /** The last of them and how long ago it was acknowledged (null: none yet). */
  lastCheckpoint: number | null;
  lastCheckpointAgeSeconds: number | null;
  /** Checkpoints more apart than this mean the pair is stalled (a few intervals). */
  staleAfterSeconds: number;
  lastPauseMs: number | null;
  meanPauseMs: number | null;
  heldOutputBytes: number;
  /** The background copy of each disk to the standby, as the last checkpoint reported it. */
  diskCopy: { disk: number; mode: string; bytes: number; total: number; done: boolean }[];
  /** As a standby: checkpoints applied, and how long ago the last one was. */
  applied: number;
  lastAppliedAgeSeconds: number | null;
}

/** `tandem serve`. */
export interface NbdStatus {
  uri: string;
  connections: number;
  requests: number;
  errors: number;
}

/** `tandem xenstored`. */
export interface XenStoreStatus {
  path: string;
  connections: number;
  transactions: number;
  watches: number;
}
