/**
 * A pair that heals itself (docs/replication.md, "Re-protection"): one host runs the guest and
 * takes standbys as they come; the other stands by and, when its primary is lost, takes over
 * (with a witness: only after winning the guest's key) and becomes that primary. A primary never
 * takes its guest down because its standby went away; a fenced one never runs again and can
 * rejoin as a standby. Every change of state goes through the pair's state machine
 * (pair-state.ts), every output through one release gate (release-gate.ts).
 *
 * Who dials whom is left to the caller: a {@link PeerSource} yields the next connection to the
 * other side, accepted on a listening socket or dialled (see host/cli/ for both).
 */

import { ErrorCode, TandemError } from "../errors.ts";
import type { Machine } from "../machine/machine.ts";
import type { Transport } from "../protocol/transport.ts";
import { PairEvent, PairState, PairStateMachine } from "./pair-state.ts";
import { replicate, type ReplicateOptions } from "./primary.ts";
import { ReleaseGate, type ReleaseLease, type ReleasedOutput } from "./release-gate.ts";
import { standby, type StandbyOptions, type StandbyResult } from "./secondary.ts";

/** Yields the next connection to the other side; rejects (any error) once `signal` aborts. */
export type PeerSource = (signal: AbortSignal) => Promise<Transport>;

/** This side owns the guest at the witness (host/witness/ Ownership has this shape). */
export interface PairOwnership extends ReleaseLease {
  readonly generation: number;
  /** Called once when the lease is lost. */
  onLost(listener: (reason: string) => void): void;
  /** Advances the generation while still owner; false if no longer owner. */
  advance(): Promise<boolean>;
  /** Gives the guest up on purpose (a clean stop). */
  release(): Promise<void>;
  /** Stops renewing. */
  close(): void;
}

/** The witness as a standby uses it (host/witness/ Witness has this shape). */
export interface PairWitness {
  /** Wins the guest if its owner is gone and the generation is still `lastGeneration`. */
  takeOver(lastGeneration: number): Promise<PairOwnership | undefined>;
}

/** Something worth telling the operator, with the pair's state after it. */
export interface PairNotice {
  state: PairState;
  message: string;
  generation: number;
}

/** Options of {@link runPrimarySide}. */
export interface PrimarySideOptions {
  /** Standbys, one at a time: the next is awaited whenever the pair is alone. */
  standbys: PeerSource;
  /** The gate every output passes (its seqs continue a takeover's). */
  gate: ReleaseGate;
  /** With a witness: the guest's key, held. Its loss fences this side. */
  ownership?: PairOwnership;
  /** Without a witness: the generation so far; each new standby gets the next. Default 0. */
  generation?: number;
  /** The state machine to continue (a takeover's), else a new one, alone. */
  state?: PairStateMachine;
  /** Options passed to each replication. */
  replicate?: Omit<ReplicateOptions, "gate" | "generation" | "confirmOwnership" | "signal" | "release">;
  onNotice?: (notice: PairNotice) => void;
  /** A clean stop: a standby is told to stand down, and this side returns "stopped". */
  signal?: AbortSignal;
}

/** How a primary side ended. */
export interface PrimarySideResult {
  /** "stopped": cancelled, the guest still runs; "fenced": the lease was lost, the guest is paused for good. */
  outcome: "stopped" | "fenced";
  generation: number;
  lastSeq: number;
  /** The state machine, to continue (a fenced primary rejoins as a standby). */
  state: PairStateMachine;
}

/**
 * Runs `machine` as the primary: alone (outputs released as they come, through the gate) until a
 * standby joins, then replicating to it (syncing, then protected once it holds the disks whole), alone
 * again when it is lost, and so on. Each standby gets a new generation (with a witness, won by
 * advancing the key first). Ends when cancelled or fenced.
 */
export async function runPrimarySide(machine: Machine, options: PrimarySideOptions): Promise<PrimarySideResult> {
  const { gate, ownership } = options;
  const state = options.state ?? new PairStateMachine(PairState.Alone);
  let generation = ownership?.generation ?? options.generation ?? 0;
  const notice = (message: string) => options.onNotice?.({ state: state.state, message, generation });
  const loop = new AbortController();
  let replication: AbortController | undefined;
  const stop = () => {
    loop.abort();
    replication?.abort();
  };
  options.signal?.addEventListener("abort", stop, { once: true });
  if (options.signal?.aborted) stop();
  let fenceReason = "";
  ownership?.onLost((reason) => {
    fenceReason = reason;
    gate.shut();
  });
  gate.onShut(() => {
    fenceReason ||= "a release found the lease no longer valid";
    if (machine.running) void machine.pause(); // before the lease can expire anywhere else
    stop();
  });
  try {
    while (!loop.signal.aborted) {
      // Alone: the guest runs, and what it says goes out as it comes (the lease still counts).
      machine.onOutput((o) => void gate.direct(o));
      if (!machine.running && !gate.isShut) await machine.resume();
      let transport: Transport;
      try {
        transport = await options.standbys(loop.signal);
      } catch (error) {
        if (loop.signal.aborted) break;
        throw error;
      }
      if (loop.signal.aborted) {
        transport.close();
        break;
      }
      state.apply(PairEvent.StandbyJoined);
      if (ownership) {
        // The new standby gets a new generation, so that an older one can never win the key.
        if (!(await ownership.advance())) {
          transport.close();
          gate.shut();
          break;
        }
        generation = ownership.generation;
      } else {
        generation++;
      }
      notice(`a standby joined: syncing at generation ${generation}`);
      replication = new AbortController();
      if (loop.signal.aborted) replication.abort();
      let syncing = true;
      const op = replicate(machine, transport, {
        ...options.replicate,
        gate,
        generation,
        confirmOwnership: ownership ? () => ownership.advance() : undefined,
        signal: replication.signal,
        onCommitted: (stats) => {
          // Protected only once the standby holds every disk whole (the background copy done and
          // a checkpoint after it acknowledged): before that, a takeover would lose the disks.
          if (syncing && stats.protected) {
            syncing = false;
            state.apply(PairEvent.SyncComplete);
            notice(`protected: the standby holds checkpoint ${stats.checkpoint}`);
          }
          options.replicate?.onCommitted?.(stats);
        },
      });
      try {
        await op.promise;
      } catch (error) {
        const code = error instanceof TandemError ? error.code : undefined;
        if (code === ErrorCode.Fenced || gate.isShut) break;
        if (code === ErrorCode.Aborted) break;
        // A standby that went away (or refused to go on: fenced to a newer generation) leaves
        // this side alone; anything else (a standby built for another guest) is the operator's to fix.
        if (code !== ErrorCode.PeerLost && code !== ErrorCode.Failed) throw error;
        if (ownership) generation = ownership.generation; // confirming advanced it
        state.apply(PairEvent.StandbyLost);
        notice(`the standby was lost (${error instanceof Error ? error.message : String(error)}); ` +
          `running on, UNPROTECTED, waiting for a standby to join`);
      } finally {
        replication = undefined;
      }
    }
  } finally {
    options.signal?.removeEventListener("abort", stop);
  }
  if (gate.isShut) {
    if (machine.running) await machine.pause();
    machine.onOutput(() => {});
    if (state.state !== PairState.Fenced) state.apply(PairEvent.LeaseLost);
    notice(`FENCED (${fenceReason}): the guest is paused and releases nothing more`);
    ownership?.close();
    return { outcome: "fenced", generation, lastSeq: gate.lastSeq, state };
  }
  return { outcome: "stopped", generation, lastSeq: gate.lastSeq, state };
}

/** Options of {@link runStandbySide}. */
export interface StandbySideOptions {
  /** Primaries to stand by for: after a loss without a takeover, the next is awaited. */
  primaries: PeerSource;
  /** With a witness: a takeover needs its key. */
  witness?: PairWitness;
  /** Where outputs go once this side runs (the outside world; keeps each seq once). */
  release: (output: ReleasedOutput) => void;
  heartbeatTimeoutMs?: number;
  /** Refuse checkpoints older than this generation (an old primary that comes back). */
  minGeneration?: number;
  /** The state machine to continue (a fenced primary's), else a new one, standing by. */
  state?: PairStateMachine;
  onNotice?: (notice: PairNotice) => void;
  /** Called with each standby operation (for progress). */
  onStandby?: (op: ReturnType<typeof standby>) => void;
  standby?: Pick<StandbyOptions, "receiver" | "onApplied">;
  /** The machine's disks as image files of this standby's own (see {@link StandbyOptions.disks}). */
  disks?: StandbyOptions["disks"];
  /** A primary built from another guest description ends this side (E_GUEST_MISMATCH) instead of being waited past. */
  failOnMismatch?: boolean;
  signal?: AbortSignal;
}

/** How a standby side ended: it took over (and now runs), or was stood down or cancelled. */
export type StandbySideResult =
  | { outcome: "takeover"; state: PairStateMachine; gate: ReleaseGate; ownership?: PairOwnership; generation: number; result: StandbyResult }
  | { outcome: "stopped" };

/**
 * Stands by for primaries from `primaries`, one after another, until one is lost and this side
 * takes over (with a witness, only after winning the key on the generation it holds), or the
 * primary stands it down. A loss it may not act on (the witness says the primary still owns the
 * guest) sends it back to wait for the next connection, still holding its last checkpoint.
 */
export async function runStandbySide(machine: Machine, options: StandbySideOptions): Promise<StandbySideResult> {
  const state = options.state ?? new PairStateMachine(PairState.StandingBy);
  if (state.state === PairState.Fenced) state.apply(PairEvent.Rejoined);
  let minGeneration = options.minGeneration ?? 0;
  const notice = (message: string) => options.onNotice?.({ state: state.state, message, generation: minGeneration });
  let won: PairOwnership | undefined;
  const lease: ReleaseLease | undefined = options.witness ? { valid: () => won?.valid() ?? false } : undefined;
  const gate = new ReleaseGate(options.release, { lease });
  const signal = options.signal ?? new AbortController().signal;
  for (;;) {
    let transport: Transport;
    try {
      transport = await options.primaries(signal);
    } catch (error) {
      if (signal.aborted) return { outcome: "stopped" };
      throw error;
    }
    notice("standing by for a primary");
    const witness = options.witness;
    const op = standby(machine, transport, {
      ...options.standby,
      disks: options.disks,
      heartbeatTimeoutMs: options.heartbeatTimeoutMs,
      minGeneration,
      release: (o) => void gate.pass(o),
      claim: witness ? async (generation) => (won = await witness.takeOver(generation)) !== undefined : undefined,
      signal,
    });
    options.onStandby?.(op);
    let result: StandbyResult;
    try {
      result = await op.promise;
    } catch (error) {
      if (signal.aborted) return { outcome: "stopped" };
      // Lost before a first checkpoint, or another guest refused: wait for the next primary.
      // Anything else, or a mismatch where the caller wants one to end it, is fatal.
      const code = error instanceof TandemError ? error.code : undefined;
      if (code !== ErrorCode.PeerLost && (code !== ErrorCode.GuestMismatch || options.failOnMismatch)) throw error;
      state.apply(PairEvent.Rejoined);
      const why = error instanceof Error ? error.message : String(error);
      notice(error instanceof TandemError && error.code === ErrorCode.GuestMismatch
        ? `refused a primary built from another guest description, having applied nothing (${why}); waiting for one built like this standby`
        : `the primary went away with nothing to take over (${why}); waiting for it again`);
      continue;
    }
    minGeneration = Math.max(minGeneration, result.generation);
    if (result.outcome === "stopped") return { outcome: "stopped" };
    if (result.outcome === "declined") {
      state.apply(PairEvent.Rejoined);
      notice(`the primary was lost (${result.reason}) but the witness says it still owns the guest: not taking over; joining again`);
      continue;
    }
    state.apply(PairEvent.TakeOver);
    gate.continueAfter(result.lastSeq); // the standby knew the sequence even where no output came with it
    const generation = won?.generation ?? result.generation + 1;
    options.onNotice?.({ state: state.state, message: `took over at checkpoint ${result.checkpoint} in ${result.failoverMs?.toFixed(1)} ms (generation ${generation}): running, waiting for a standby to join`, generation });
    return { outcome: "takeover", state, gate, ownership: won, generation, result };
  }
}

/** Options of {@link runPair}. */
export interface PairOptions {
  /** Where this host starts: running the guest, or standing by for a primary. */
  role: "primary" | "standby";
  /** Standbys, whenever this host is the primary. */
  standbys: PeerSource;
  /** Primaries, when it starts as a standby. */
  primaries: PeerSource;
  /** Primaries after this host was fenced (with a witness: the owner it names). Default `primaries`. */
  rejoin?: PeerSource;
  /** Starting as primary with a witness: the guest's key, already won. */
  ownership?: PairOwnership;
  /** With a witness: what a standby must win before it takes over. */
  witness?: PairWitness;
  /** The outside world. */
  release: (output: ReleasedOutput) => void;
  heartbeatTimeoutMs?: number;
  replicate?: PrimarySideOptions["replicate"];
  onNotice?: (notice: PairNotice) => void;
  onStandby?: StandbySideOptions["onStandby"];
  /** Options of each standby operation (its receiver, `onApplied`). */
  standby?: StandbySideOptions["standby"];
  /** See {@link StandbySideOptions.failOnMismatch}. */
  failOnMismatch?: boolean;
  /** Starting as a standby: its disks as image files with records and journals ({@link StandbySideOptions.disks}). */
  standbyDisks?: StandbySideOptions["disks"];
  /** Told of each takeover this host makes. */
  onTakeover?: (result: StandbyResult) => void;
  /** A clean stop. */
  signal?: AbortSignal;
}

/**
 * One host of a pair for as long as it lives: primary (taking standbys), or standby (taking over
 * when its primary is lost, then primary), or fenced primary rejoining as a standby, in turn.
 * Resolves when stopped (cancelled, or stood down by its primary).
 */
export async function runPair(machine: Machine, options: PairOptions): Promise<void> {
  let role = options.role;
  let state: PairStateMachine | undefined;
  let gate = new ReleaseGate(options.release, { lease: options.ownership });
  let ownership = options.ownership;
  let generation = ownership?.generation ?? 0;
  let primaries = options.primaries;
  for (;;) {
    if (role === "primary") {
      const ran = await runPrimarySide(machine, {
        standbys: options.standbys, gate, ownership, generation, state, replicate: options.replicate, onNotice: options.onNotice, signal: options.signal,
      });
      if (ran.outcome === "stopped") return;
      role = "standby";
      state = ran.state;
      generation = ran.generation;
      primaries = options.rejoin ?? options.primaries;
      continue;
    }
    const stood = await runStandbySide(machine, {
      primaries, witness: options.witness, release: options.release, heartbeatTimeoutMs: options.heartbeatTimeoutMs, minGeneration: generation,
      state, onNotice: options.onNotice, onStandby: options.onStandby, standby: options.standby, failOnMismatch: options.failOnMismatch, signal: options.signal,
      disks: options.role === "standby" ? options.standbyDisks : undefined,
    });
    if (stood.outcome === "stopped") return;
    options.onTakeover?.(stood.result);
    role = "primary";
    ({ state, gate, ownership, generation } = stood);
  }
}
