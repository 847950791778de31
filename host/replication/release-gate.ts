/**
 * The one place where a primary's outputs reach the outside world (docs/replication.md, "One
 * release gate"). Outputs are sealed with sequence numbers, held per checkpoint, and released
 * when that checkpoint is acknowledged; with a witness, each single release also asks the lease
 * whether this side still owns the guest at that moment. Once the lease says no, the gate shuts
 * for good: a fenced primary releases nothing more, ever.
 */

import type { MachineOutput } from "../machine/machine.ts";

/** An output released to the outside world, with its sequence number (keep each seq once). */
export interface ReleasedOutput {
  seq: number;
  channel: string;
  data: Uint8Array;
}

/**
 * What the gate asks before every release. `valid()` must be cheap and local (a clock read): it
 * runs once per output. host/witness/ implements it over an etcd lease.
 */
export interface ReleaseLease {
  /** True while the lease is valid, safety margin included, at this very moment. */
  valid(): boolean;
}

/** Options of {@link ReleaseGate}. */
export interface ReleaseGateOptions {
  /** Asked before every release; without one, releases depend on ACKs alone (Remus). */
  lease?: ReleaseLease;
  /** The seq of the last output already released by this guest's history (a takeover continues it). Default 0. */
  lastSeq?: number;
  /** Called once, when a release was refused because the lease was no longer valid. */
  onShut?: () => void;
}

/** Holds sealed outputs per checkpoint and releases them through one door. */
export class ReleaseGate {
  readonly #release: (output: ReleasedOutput) => void;
  readonly #lease: ReleaseLease | undefined;
  readonly #onShut: (() => void)[] = [];
  readonly #held: { checkpoint: number; outputs: ReleasedOutput[] }[] = [];
  #seq: number;
  #heldBytes = 0;
  #shut = false;

  constructor(release: (output: ReleasedOutput) => void, options: ReleaseGateOptions = {}) {
    this.#release = release;
    this.#lease = options.lease;
    if (options.onShut) this.#onShut.push(options.onShut);
    this.#seq = options.lastSeq ?? 0;
  }

  /** The highest seq handed out so far. */
  get lastSeq(): number {
    return this.#seq;
  }

  /** Output bytes sealed and not yet released. */
  get heldBytes(): number {
    return this.#heldBytes;
  }

  /** True once a release was refused for want of a valid lease, or {@link shut} was called. */
  get isShut(): boolean {
    return this.#shut;
  }

  /** Gives each output the next seq; they are neither held nor released yet. */
  seal(outputs: readonly MachineOutput[]): ReleasedOutput[] {
    return outputs.map((o) => ({ seq: ++this.#seq, channel: o.channel, data: o.data }));
  }

  /** Holds `outputs` (sealed) until `checkpoint` is acknowledged. */
  hold(checkpoint: number, outputs: ReleasedOutput[]): void {
    if (outputs.length === 0) return;
    this.#held.push({ checkpoint, outputs });
    for (const o of outputs) this.#heldBytes += o.data.length;
  }

  /**
   * `checkpoint` is acknowledged: releases every output held for it and the ones before. Returns
   * false if the gate shut on the way (what was not released stays held).
   */
  acknowledge(checkpoint: number): boolean {
    while (this.#held.length > 0 && this.#held[0].checkpoint <= checkpoint) {
      if (!this.#drain(this.#held[0].outputs)) return false;
      this.#held.shift();
    }
    return true;
  }

  /**
   * Releases everything held, whatever its checkpoint: for a primary that is alone (no standby
   * will take over, or the witness confirmed it still owns the guest). False if the gate shut.
   */
  releaseHeld(): boolean {
    while (this.#held.length > 0) {
      if (!this.#drain(this.#held[0].outputs)) return false;
      this.#held.shift();
    }
    return true;
  }

  /** Seals `output` and releases it now (a primary alone); held instead if the gate is shut. False then. */
  direct(output: MachineOutput): boolean {
    const [sealed] = this.seal([output]);
    this.hold(Number.MAX_SAFE_INTEGER, [sealed]);
    return this.releaseHeld();
  }

  /**
   * Releases an output sealed elsewhere (a standby taking over continues the sequence it holds);
   * later seals continue after its seq. False, and dropped, if the gate is shut.
   */
  pass(output: ReleasedOutput): boolean {
    this.#seq = Math.max(this.#seq, output.seq);
    this.#heldBytes += output.data.length;
    return this.#drain([output]);
  }

  /** Later seals continue after `seq` (at least): a takeover's history may end in a checkpoint without outputs. */
  continueAfter(seq: number): void {
    this.#seq = Math.max(this.#seq, seq);
  }

  /** Calls `listener` once when the gate shuts (at once if it already has). */
  onShut(listener: () => void): void {
    if (this.#shut) listener();
    else this.#onShut.push(listener);
  }

  /** Shuts the gate for good (fenced): nothing more is released. */
  shut(): void {
    if (this.#shut) return;
    this.#shut = true;
    for (const listener of this.#onShut.splice(0)) listener();
  }

  /** Releases `outputs` from the front, removing each one released; false if the gate shut first. */
  #drain(outputs: ReleasedOutput[]): boolean {
    while (outputs.length > 0) {
      // The check is per output and right before it leaves: a lease can end between two of them.
      if (this.#shut || (this.#lease !== undefined && !this.#lease.valid())) {
        this.shut();
        return false;
      }
      const o = outputs.shift()!;
      this.#heldBytes -= o.data.length;
      this.#release(o);
    }
    return true;
  }
}
