/**
 * The witness: a key in etcd that only one side of a pair can hold, so that two primaries never
 * run at once while etcd is consistent (docs/replication.md, "The witness").
 *
 * Per protected guest, two keys under `/tandem/<guest>/`:
 * - `generation`: a plain key, the generation of the guest's current history ("1", "2", ...);
 * - `owner`: JSON {side, generation, address}, attached to the owner's lease. It vanishes when
 *   the lease expires (etcd revokes it), and only then can another side win it.
 *
 * Rules (each a single etcd transaction):
 * - a fresh primary claims a guest that has neither key (generation 1);
 * - a standby takes over only if `owner` is gone AND `generation` is still the one it last saw;
 *   it then writes generation + 1 and itself as owner;
 * - a primary that loses its standby, or gains a new one, advances the generation while it is
 *   still the owner: a standby of an older generation can never win afterwards.
 *
 * The owner's lease is renewed every quarter of its TTL. It counts as valid locally until the
 * moment the last successful renewal was *sent*, plus the TTL, minus a safety margin for clock
 * drift and for the time a fence takes: etcd cannot expire it before then (a renewal resets the
 * lease at the leader after it was sent, and a leader change only extends leases).
 */

import { ErrorCode, TandemError } from "../errors.ts";
import { EtcdGateway, type EtcdGatewayOptions } from "./etcd-gateway.ts";

/** Who owns a guest, as the `owner` key says. */
export interface OwnerRecord {
  /** The owning side's name (unique per host of the pair). */
  side: string;
  generation: number;
  /** Where the owner accepts standbys (`tandem secondary --join`), if it does. */
  address?: string;
}

/** Options of {@link Witness}. */
export interface WitnessOptions extends EtcdGatewayOptions {
  /** etcd client URLs. */
  endpoints: readonly string[];
  /** The protected guest's name: its keys live under /tandem/<guest>/. */
  guest: string;
  /** This side's name. */
  side: string;
  /** Where this side accepts standbys once it owns the guest. */
  address?: string;
  /** Lease TTL in ms, a whole number of seconds (etcd's unit). Default 2000. */
  ttlMs?: number;
  /** Stop releasing this long before the lease could expire at etcd. Default a quarter of the TTL. */
  marginMs?: number;
}

const NAME = /^[A-Za-z0-9._-]{1,100}$/;
/** How soon a failed renewal or takeover attempt is tried again. */
const RETRY_MS = 50;

/** One side's view of the witness of one guest. */
export class Witness {
  readonly etcd: EtcdGateway;
  readonly guest: string;
  readonly side: string;
  readonly address: string | undefined;
  readonly ttlMs: number;
  readonly marginMs: number;
  readonly #ownerKey: string;
  readonly #generationKey: string;

  constructor(options: WitnessOptions) {
    if (!NAME.test(options.guest) || !NAME.test(options.side)) {
      throw new TandemError(ErrorCode.BadArgument, `guest '${options.guest}' and side '${options.side}': 1-100 of A-Z a-z 0-9 . _ -`);
    }
    this.ttlMs = options.ttlMs ?? 2000;
    this.marginMs = options.marginMs ?? this.ttlMs / 4;
    if (!Number.isInteger(this.ttlMs / 1000) || this.ttlMs < 1000 || !(this.marginMs > 0 && this.marginMs < this.ttlMs / 2)) {
      throw new TandemError(ErrorCode.BadArgument, `lease TTL ${this.ttlMs} ms (whole seconds, at least 1) and margin ${this.marginMs} ms (above 0, under half the TTL)`);
    }
    this.etcd = new EtcdGateway(options.endpoints, { requestTimeoutMs: options.requestTimeoutMs ?? this.ttlMs / 4 });
    this.guest = options.guest;
    this.side = options.side;
    this.address = options.address;
    this.#ownerKey = `/tandem/${options.guest}/owner`;
    this.#generationKey = `/tandem/${options.guest}/generation`;
  }

  /** The owner now, if any (linearizable read). */
  async owner(): Promise<OwnerRecord | undefined> {
    const kv = await this.etcd.get(this.#ownerKey);
    return kv ? parseOwner(kv.value) : undefined;
  }

  /**
   * A fresh primary claims a guest nobody ever owned (generation 1). E_WITNESS if it has an owner
   * or a history: starting it afresh would fork it.
   */
  async claimFresh(): Promise<Ownership> {
    // A loaded host or an etcd electing a leader may miss one request; a fresh claim may wait.
    let granted: { lease: string; grantedAt: number } | undefined;
    for (let attempt = 1; !granted; attempt++) {
      granted = await this.#grant().catch((error) => {
        if (attempt >= 5 || !(error instanceof TandemError && error.code === ErrorCode.Witness)) throw error;
        return undefined;
      });
    }
    const { lease, grantedAt } = granted;
    const record: OwnerRecord = { side: this.side, generation: 1, address: this.address };
    const { succeeded, reads } = await this.etcd.txn(
      [{ key: this.#ownerKey, target: "CREATE", result: "EQUAL", createRevision: "0" },
        { key: this.#generationKey, target: "CREATE", result: "EQUAL", createRevision: "0" }],
      [{ put: { key: this.#generationKey, value: "1" } }, { put: { key: this.#ownerKey, value: JSON.stringify(record), lease } }],
      [{ range: { key: this.#ownerKey } }, { range: { key: this.#generationKey } }],
    ).catch(async (error) => {
      await this.etcd.revoke(lease).catch(() => {});
      throw error;
    });
    if (!succeeded) {
      await this.etcd.revoke(lease).catch(() => {});
      const owner = reads[0] ? parseOwner(reads[0].value) : undefined;
      throw new TandemError(ErrorCode.Witness, owner
        ? `guest '${this.guest}' is owned by side '${owner.side}' (generation ${owner.generation}): join it as a standby instead`
        : `guest '${this.guest}' has a history at generation ${reads[1]?.value ?? "?"}: a fresh primary would fork it; ` +
          `pick another guest name, or remove it with: etcdctl del --prefix /tandem/${this.guest}/`);
    }
    return new Ownership(this, lease, record, grantedAt, this.#ownerKey, this.#generationKey);
  }

  /**
   * A standby whose primary is lost tries to win the guest: it succeeds once the owner's lease
   * has expired, if the generation is still `lastGeneration`. It retries until `waitMs` (default
   * the TTL plus a second: etcd revokes expired leases on a 500 ms tick) and gives up at once if
   * the generation moved on (the primary is alive and advanced it, or another side won).
   * Resolves undefined when it did not win, including when etcd cannot be reached.
   */
  async takeOver(lastGeneration: number, waitMs = this.ttlMs + 1000): Promise<Ownership | undefined> {
    const deadline = performance.now() + waitMs;
    const record: OwnerRecord = { side: this.side, generation: lastGeneration + 1, address: this.address };
    while (performance.now() < deadline) {
      try {
        const { succeeded, reads } = await this.etcd.txn(
          [{ key: this.#ownerKey, target: "CREATE", result: "EQUAL", createRevision: "0" }], [],
          [{ range: { key: this.#generationKey } }],
        );
        const generation = succeeded ? (await this.etcd.get(this.#generationKey))?.value : reads[0]?.value;
        if (generation !== String(lastGeneration)) return undefined; // the history moved on without us
        if (succeeded) {
          // The owner is gone: a lease of our own (granted only now, so it is fresh), then the CAS.
          const { lease, grantedAt } = await this.#grant();
          const won = await this.etcd.txn(
            [{ key: this.#ownerKey, target: "CREATE", result: "EQUAL", createRevision: "0" },
              { key: this.#generationKey, target: "VALUE", result: "EQUAL", value: String(lastGeneration) }],
            [{ put: { key: this.#generationKey, value: String(record.generation) } }, { put: { key: this.#ownerKey, value: JSON.stringify(record), lease } }],
          ).catch(() => ({ succeeded: false }));
          if (won.succeeded) {
            const ownership = new Ownership(this, lease, record, grantedAt, this.#ownerKey, this.#generationKey);
            if (ownership.valid()) return ownership;
            ownership.close(); // it took so long that this lease may be near its end: let it lapse
            return undefined;
          }
          await this.etcd.revoke(lease).catch(() => {});
        }
      } catch (error) {
        if (!(error instanceof TandemError && error.code === ErrorCode.Witness)) throw error;
      }
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
    }
    return undefined;
  }

  async #grant(): Promise<{ lease: string; grantedAt: number }> {
    const grantedAt = performance.now(); // before the request: the lease cannot start earlier
    return { lease: await this.etcd.grant(this.ttlMs / 1000), grantedAt };
  }
}

/**
 * This side owns the guest: a lease kept alive in the background, valid (locally) until it
 * cannot be proven so. Once lost it never comes back; {@link Ownership.onLost} is told once.
 */
export class Ownership {
  readonly #witness: Witness;
  readonly #lease: string;
  readonly #ownerKey: string;
  readonly #generationKey: string;
  #record: OwnerRecord;
  #validUntil: number;
  #lost = false;
  #closed = false;
  #renewTimer: ReturnType<typeof setTimeout> | undefined;
  #expiryTimer: ReturnType<typeof setTimeout> | undefined;
  readonly #onLost: ((reason: string) => void)[] = [];

  constructor(witness: Witness, lease: string, record: OwnerRecord, grantedAt: number, ownerKey: string, generationKey: string) {
    this.#witness = witness;
    this.#lease = lease;
    this.#record = record;
    this.#ownerKey = ownerKey;
    this.#generationKey = generationKey;
    this.#validUntil = grantedAt + witness.ttlMs - witness.marginMs;
    this.#armExpiry();
    this.#scheduleRenewal();
  }

  /** The generation this side owns the guest at. */
  get generation(): number {
    return this.#record.generation;
  }

  /** Milliseconds of validity left now (negative once past). */
  get remainingMs(): number {
    return this.#lost ? -1 : this.#validUntil - performance.now();
  }

  /** True while the lease is valid with its margin, at this moment: a clock read, no I/O. */
  valid(): boolean {
    return !this.#lost && performance.now() < this.#validUntil;
  }

  /** Calls `listener` once when the lease is lost (could not be renewed in time, or etcd dropped it). */
  onLost(listener: (reason: string) => void): void {
    if (this.#lost) listener("already lost");
    else this.#onLost.push(listener);
  }

  /**
   * Advances the generation while still owner (one transaction that holds only if the owner key
   * is still this side's record): after it, a standby of an older generation can never win.
   * Resolves false if this side is no longer the owner or cannot prove it before its lease ends.
   */
  async advance(): Promise<boolean> {
    const next: OwnerRecord = { ...this.#record, generation: this.#record.generation + 1 };
    while (this.valid()) {
      try {
        const { succeeded } = await this.#witness.etcd.txn(
          [{ key: this.#ownerKey, target: "VALUE", result: "EQUAL", value: JSON.stringify(this.#record) },
            { key: this.#generationKey, target: "VALUE", result: "EQUAL", value: String(this.#record.generation) }],
          [{ put: { key: this.#generationKey, value: String(next.generation) } }, { put: { key: this.#ownerKey, value: JSON.stringify(next), lease: this.#lease } }],
        );
        if (!succeeded) {
          this.#lose("the witness names another owner or generation");
          return false;
        }
        this.#record = next;
        return this.valid();
      } catch (error) {
        if (!(error instanceof TandemError && error.code === ErrorCode.Witness)) throw error;
        await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
      }
    }
    return false;
  }

  /** Gives the guest up on purpose (a clean stop): the lease is revoked, so a standby may win at once. */
  async release(): Promise<void> {
    this.#lose("released");
    await this.#witness.etcd.revoke(this.#lease).catch(() => {});
  }

  /** Stops renewing (the lease then expires at etcd by itself). */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#renewTimer);
    clearTimeout(this.#expiryTimer);
  }

  /** Every quarter TTL; soon again after a failure (an etcd leader election takes about a second). */
  #scheduleRenewal(failed = false): void {
    if (this.#closed) return;
    this.#renewTimer = setTimeout(() => void this.#renew(), failed ? RETRY_MS : this.#witness.ttlMs / 4);
  }

  async #renew(): Promise<void> {
    if (this.#closed || this.#lost) return;
    const sentAt = performance.now();
    try {
      const ttl = await this.#witness.etcd.keepAlive(this.#lease);
      if (ttl <= 0) return this.#lose("etcd says the lease has expired");
      this.#validUntil = Math.max(this.#validUntil, sentAt + Math.min(ttl * 1000, this.#witness.ttlMs) - this.#witness.marginMs);
      this.#armExpiry();
    } catch {
      // Not renewed this time (etcd unreachable, or a malformed answer); the expiry timer fences
      // if no later renewal makes it in time.
      return this.#scheduleRenewal(true);
    }
    this.#scheduleRenewal();
  }

  #armExpiry(): void {
    clearTimeout(this.#expiryTimer);
    if (this.#closed) return;
    this.#expiryTimer = setTimeout(() => {
      if (!this.valid()) this.#lose("the lease could not be renewed in time");
      else this.#armExpiry();
    }, Math.max(0, this.#validUntil - performance.now()));
  }

  #lose(reason: string): void {
    if (this.#lost) return;
    this.#lost = true;
    this.close();
    for (const listener of this.#onLost.splice(0)) listener(reason);
  }
}

function parseOwner(text: string): OwnerRecord {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new TandemError(ErrorCode.Witness, "the owner key does not hold JSON");
  }
  const record = value as Partial<OwnerRecord>;
  if (typeof record?.side !== "string" || !Number.isSafeInteger(record.generation) || (record.address !== undefined && typeof record.address !== "string")) {
    throw new TandemError(ErrorCode.Witness, "the owner key does not hold {side, generation, address}");
  }
  return { side: record.side, generation: record.generation!, address: record.address };
}
