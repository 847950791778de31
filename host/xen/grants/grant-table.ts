/**
 * One domain's grant table, version 1: the entries live in the granting domain's memory (as the
 * shared frames of a real grant table do), where the granter writes them and a hostile granter
 * may change them at any time. This class plays both parts Xen's grant code has:
 *
 * - the granting side (a frontend: Linux's gnttab_grant_foreign_access and
 *   gnttab_end_foreign_access_ref), which fills and clears entries;
 * - the hypervisor acting for a mapping domain (a backend: GNTTABOP_map_grant_ref, unmap and
 *   copy), which reads an entry once into locals (Xen's shadow copy), checks it, and touches only
 *   the granted frame, with the granted access, within one page.
 *
 * Xen keeps its pin counts (the active entries) in its own memory, out of the guest's reach; so
 * does this class. Flags are updated by read-modify-write, not compare-and-swap: the guest and the
 * backend run in one JavaScript thread, so nothing can change an entry between the two.
 */

import { ErrorCode, TandemError } from "../../errors.ts";
import { GuestMemory } from "../../memory/guest-memory.ts";
import {
  GNTTAB_NR_RESERVED_ENTRIES, GRANT_ENTRY_DOMID, GRANT_ENTRY_FLAGS, GRANT_ENTRY_FRAME, GRANT_ENTRY_V1_SIZE, GRANT_PAGE_SIZE,
  GrantFlag, GrantStatus,
} from "./grant-entry.ts";
import { GrantMapping } from "./grant-mapping.ts";

/** Where the entries are: a byte array of their own, or `frames` frames of the granter's memory from `frame`. */
export type GrantEntriesPlace = Uint8Array | { frame: number; frames: number };

/** How a grant table is set up. */
export interface GrantTableOptions {
  /** The granting domain. */
  domid: number;
  /** The granting domain's memory: frame `f` is bytes `f * 4096` to `f * 4096 + 4095`. */
  memory: GuestMemory | Uint8Array;
  /** Where the entries live; default one page of their own (512 entries). Its length must be a multiple of 8. */
  entries?: GrantEntriesPlace;
}

/** Whether a copy reads the granted page into a local buffer, or writes a local buffer into it. */
export type GrantCopyDirection = "from-grant" | "to-grant";

/** One segment of a batch copy (after GNTTABOP_copy, with a local buffer on one side). */
export interface GrantCopySegment {
  direction: GrantCopyDirection;
  /** The grant reference in this table. */
  ref: number;
  /** Where in the granted page; `offset + length` must be at most 4096. */
  offset: number;
  length: number;
  /** The local side. */
  buffer: Uint8Array;
  /** Where in `buffer`; default 0. */
  bufferOffset?: number;
}

/** The highest domain id of a real domain (DOMID_FIRST_RESERVED - 1 in xen.h). */
const MAX_DOMID = 0x7fef;

/** What Xen keeps per entry in use: pins by access, and the frame as checked at the first pin. */
interface ActiveEntry {
  readers: number;
  writers: number;
  frame: number;
}

/** A checked entry, or why it was refused. */
type Checked = { ok: true; frame: number } | { ok: false; status: GrantStatus; reason: string };

/** A grant table of one domain. */
export class GrantTable {
  /** The granting domain. */
  readonly domid: number;
  /** Entries in the table. */
  readonly size: number;
  readonly #memory: GuestMemory | Uint8Array;
  readonly #place: GrantEntriesPlace;
  readonly #active = new Map<number, ActiveEntry>();
  /** Free references, taken from the end: the lowest is handed out first. */
  readonly #free: number[] = [];
  readonly #granted = new Set<number>();
  #view: DataView | undefined;

  constructor(options: GrantTableOptions) {
    const { domid, memory } = options;
    if (!Number.isInteger(domid) || domid < 0 || domid > MAX_DOMID) throw new TandemError(ErrorCode.BadArgument, `grant table of domain ${domid}: a domain id is 0 to ${MAX_DOMID}`);
    const place = options.entries ?? new Uint8Array(GRANT_PAGE_SIZE);
    this.domid = domid;
    this.#memory = memory;
    this.#place = place;
    let bytes: number;
    if (place instanceof Uint8Array) {
      bytes = place.length;
    } else {
      const { frame, frames } = place;
      if (!Number.isInteger(frame) || !Number.isInteger(frames) || frame < 0 || frames <= 0 || frame + frames > this.frameCount) {
        throw new TandemError(ErrorCode.OutOfRange, `grant table frames ${frame}+${frames}: domain ${domid}'s memory has ${this.frameCount} frames`);
      }
      bytes = frames * GRANT_PAGE_SIZE;
    }
    if (bytes === 0 || bytes % GRANT_ENTRY_V1_SIZE !== 0) throw new TandemError(ErrorCode.BadArgument, `grant table of ${bytes} bytes: expected a positive multiple of ${GRANT_ENTRY_V1_SIZE}`);
    this.size = bytes / GRANT_ENTRY_V1_SIZE;
    for (let ref = this.size - 1; ref >= GNTTAB_NR_RESERVED_ENTRIES; ref--) this.#free.push(ref);
  }

  /** Frames of the granting domain's memory. */
  get frameCount(): number {
    return Math.floor(this.#memoryBytes().length / GRANT_PAGE_SIZE);
  }

  /** The entries' bytes (for inspection, and for tests that play a hostile granter). */
  get entryBytes(): Uint8Array {
    const view = this.#entries();
    return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
  }

  // ---- the granting side ----

  /**
   * Grants `domid` access to `frame` of this domain's memory (read-only if `readonly`), as Linux's
   * gnttab_grant_foreign_access: domid and frame first, then the flags that make the entry live.
   * Returns the grant reference. E_GRANT_IN_USE when every entry is taken.
   */
  grantAccess(domid: number, frame: number, readonly: boolean): number {
    if (!Number.isInteger(domid) || domid < 0 || domid > MAX_DOMID) throw new TandemError(ErrorCode.BadArgument, `grant to domain ${domid}: a domain id is 0 to ${MAX_DOMID}`);
    if (!Number.isInteger(frame) || frame < 0 || frame >= this.frameCount) {
      throw new TandemError(ErrorCode.OutOfRange, `grant of frame ${frame}: domain ${this.domid}'s memory has ${this.frameCount} frames`);
    }
    const ref = this.#free.pop();
    if (ref === undefined) throw new TandemError(ErrorCode.GrantInUse, `domain ${this.domid}'s grant table is full (${this.size} entries, ${GNTTAB_NR_RESERVED_ENTRIES} reserved)`);
    const view = this.#entries();
    const at = ref * GRANT_ENTRY_V1_SIZE;
    view.setUint16(at + GRANT_ENTRY_DOMID, domid, true);
    view.setUint32(at + GRANT_ENTRY_FRAME, frame, true);
    view.setUint16(at + GRANT_ENTRY_FLAGS, GrantFlag.PermitAccess | (readonly ? GrantFlag.Readonly : 0), true);
    this.#granted.add(ref);
    return ref;
  }

  /**
   * Ends a grant made by {@link grantAccess}, as gnttab_end_foreign_access_ref: refused with
   * E_GRANT_IN_USE while the entry says it is mapped (GTF_reading or GTF_writing), and the grant
   * then stays. E_GRANT_REF for a reference this side did not grant.
   */
  endAccess(ref: number): void {
    if (!this.#granted.has(ref)) throw new TandemError(ErrorCode.GrantRef, `grant reference ${ref} of domain ${this.domid} is not granted`);
    const view = this.#entries();
    const at = ref * GRANT_ENTRY_V1_SIZE + GRANT_ENTRY_FLAGS;
    const flags = view.getUint16(at, true);
    if ((flags & (GrantFlag.Reading | GrantFlag.Writing)) !== 0) {
      throw new TandemError(ErrorCode.GrantInUse, `grant reference ${ref} of domain ${this.domid} is still mapped; unmap it before ending access`);
    }
    view.setUint16(at, 0, true);
    this.#granted.delete(ref);
    this.#free.push(ref);
  }

  // ---- the mapping side (the hypervisor, acting for domain `local`) ----

  /**
   * Maps grant `ref` for domain `local`, writable or read-only (GNTTABOP_map_grant_ref). The entry
   * must be permit_access, granted to `local`, not read-only for a writable map, and its frame
   * inside this domain's memory: otherwise E_GRANT_REF (no such entry) or E_GRANT_DENIED.
   */
  map(local: number, ref: number, writable: boolean): GrantMapping {
    const checked = this.#check(local, ref, writable);
    if (!checked.ok) throw grantStatusError(checked.status, `map of grant ${ref} of domain ${this.domid} by domain ${local}: ${checked.reason}`);
    // Xen keeps using the frame it checked at the first pin, whatever the guest writes later.
    const active = this.#active.get(ref) ?? { readers: 0, writers: 0, frame: checked.frame };
    this.#active.set(ref, active);
    if (writable) active.writers++;
    else active.readers++;
    this.#setFlags(ref, GrantFlag.Reading | (writable ? GrantFlag.Writing : 0), 0);
    const frame = active.frame;
    return new GrantMapping(ref, frame, writable, {
      page: () => this.#memoryBytes().subarray(frame * GRANT_PAGE_SIZE, (frame + 1) * GRANT_PAGE_SIZE),
      release: () => this.#unpin(ref, writable),
    });
  }

  /**
   * Copies each segment between a grant of this table and a local buffer, for domain `local`
   * (GNTTABOP_copy). Every segment is checked on its own; the result holds its status (a
   * {@link GrantStatus}: 0 copied, BadGntref, GeneralError for a grant that does not give `local`
   * this access, BadPage for a frame outside the granter's memory, BadCopyArg for a range past the
   * page or the buffer). A refused segment copies nothing.
   */
  copy(local: number, segments: readonly GrantCopySegment[]): GrantStatus[] {
    return segments.map((segment) => this.#copyOne(local, segment));
  }

  /** Pins held on `ref` by mappings (readers plus writers). */
  pins(ref: number): number {
    const active = this.#active.get(ref);
    return active === undefined ? 0 : active.readers + active.writers;
  }

  #copyOne(local: number, segment: GrantCopySegment): GrantStatus {
    const { ref, offset, length, buffer } = segment;
    const bufferOffset = segment.bufferOffset ?? 0;
    const ints = [offset, length, bufferOffset].every((n) => Number.isInteger(n) && n >= 0);
    if (!ints || offset + length > GRANT_PAGE_SIZE || !(buffer instanceof Uint8Array) || bufferOffset + length > buffer.length) return GrantStatus.BadCopyArg;
    const toGrant = segment.direction === "to-grant";
    if (!toGrant && segment.direction !== "from-grant") return GrantStatus.BadCopyArg;
    const checked = this.#check(local, ref, toGrant);
    if (!checked.ok) return checked.status;
    const frame = this.#active.get(ref)?.frame ?? checked.frame;
    const page = this.#memoryBytes().subarray(frame * GRANT_PAGE_SIZE, (frame + 1) * GRANT_PAGE_SIZE);
    if (toGrant) page.set(buffer.subarray(bufferOffset, bufferOffset + length), offset);
    else buffer.set(page.subarray(offset, offset + length), bufferOffset);
    return GrantStatus.Okay;
  }

  /** Reads the entry once into locals, then checks the copy only (Xen's shadow entry). */
  #check(local: number, ref: number, writable: boolean): Checked {
    if (!Number.isInteger(ref) || ref < 0 || ref >= this.size) return { ok: false, status: GrantStatus.BadGntref, reason: `the table has ${this.size} entries` };
    const view = this.#entries();
    const at = ref * GRANT_ENTRY_V1_SIZE;
    const flags = view.getUint16(at + GRANT_ENTRY_FLAGS, true);
    const domid = view.getUint16(at + GRANT_ENTRY_DOMID, true);
    const frame = view.getUint32(at + GRANT_ENTRY_FRAME, true);
    if ((flags & GrantFlag.TypeMask) !== GrantFlag.PermitAccess || (flags & GrantFlag.SubPage) !== 0) {
      return { ok: false, status: GrantStatus.GeneralError, reason: `the entry's flags 0x${flags.toString(16)} do not permit access` };
    }
    if (domid !== local) return { ok: false, status: GrantStatus.GeneralError, reason: `the entry grants domain ${domid}, not ${local}` };
    if (writable && (flags & GrantFlag.Readonly) !== 0) return { ok: false, status: GrantStatus.GeneralError, reason: "the grant is read-only; a write is refused" };
    if (frame >= this.frameCount) return { ok: false, status: GrantStatus.BadPage, reason: `frame ${frame} is outside the granter's ${this.frameCount} frames` };
    return { ok: true, frame };
  }

  #unpin(ref: number, writable: boolean): void {
    const active = this.#active.get(ref);
    if (active === undefined) return;
    if (writable) active.writers--;
    else active.readers--;
    const clear = (active.writers === 0 ? GrantFlag.Writing : 0) | (active.readers + active.writers === 0 ? GrantFlag.Reading : 0);
    if (active.readers + active.writers === 0) this.#active.delete(ref);
    this.#setFlags(ref, 0, clear);
  }

  #setFlags(ref: number, set: number, clear: number): void {
    const view = this.#entries();
    const at = ref * GRANT_ENTRY_V1_SIZE + GRANT_ENTRY_FLAGS;
    view.setUint16(at, (view.getUint16(at, true) | set) & ~clear, true);
  }

  #memoryBytes(): Uint8Array {
    return this.#memory instanceof GuestMemory ? this.#memory.bytes() : this.#memory;
  }

  /** A view of the entries, made again if the memory under them grew (its buffer changed). */
  #entries(): DataView {
    const place = this.#place;
    const bytes = place instanceof Uint8Array ? place : this.#memoryBytes().subarray(place.frame * GRANT_PAGE_SIZE, (place.frame + place.frames) * GRANT_PAGE_SIZE);
    if (this.#view === undefined || this.#view.buffer !== bytes.buffer) this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    return this.#view;
  }
}

/** The TandemError for a refused grant operation's status. */
export function grantStatusError(status: GrantStatus, message: string): TandemError {
  switch (status) {
    case GrantStatus.BadGntref:
      return new TandemError(ErrorCode.GrantRef, message);
    case GrantStatus.BadCopyArg:
      return new TandemError(ErrorCode.OutOfRange, message);
    default:
      return new TandemError(ErrorCode.GrantDenied, message);
  }
}
