/**
 * A grant mapped by another domain: the one granted page, read-only or writable, until unmapped.
 * While it is mapped the grant entry carries GTF_reading (and GTF_writing for a writable
 * mapping), so the granter cannot end the grant under it.
 */

import { ErrorCode, TandemError } from "../../errors.ts";
import { GRANT_PAGE_SIZE } from "./grant-entry.ts";

/** What a mapping needs from its table; only {@link GrantTable} makes mappings. */
export interface GrantMappingSource {
  /** The granted frame's bytes as they are now (memory may have grown since the map). */
  page(): Uint8Array;
  /** Drops this mapping's pin on the entry. */
  release(): void;
}

/** One mapped grant. */
export class GrantMapping {
  /** The grant reference mapped. */
  readonly ref: number;
  /** The granting domain's frame it maps. */
  readonly frame: number;
  /** Whether writes are allowed (the grant is not GTF_readonly and was mapped for writing). */
  readonly writable: boolean;
  readonly #source: GrantMappingSource;
  #mapped = true;

  /** Use {@link GrantTable.map}. */
  constructor(ref: number, frame: number, writable: boolean, source: GrantMappingSource) {
    this.ref = ref;
    this.frame = frame;
    this.writable = writable;
    this.#source = source;
  }

  /** Whether {@link unmap} has not been called yet. */
  get mapped(): boolean {
    return this.#mapped;
  }

  /**
   * The page itself (4096 bytes, a view into the granter's memory, not a copy). Through a
   * read-only mapping the holder must only read it; {@link write} enforces that for callers who
   * do not hold the view.
   */
  get bytes(): Uint8Array {
    this.#checkMapped();
    return this.#source.page();
  }

  /** A copy of `length` bytes at `offset` in the page. */
  read(offset: number, length: number): Uint8Array {
    this.#checkRange(offset, length);
    return this.bytes.slice(offset, offset + length);
  }

  /** Writes `data` at `offset` in the page; E_GRANT_DENIED through a read-only mapping. */
  write(offset: number, data: Uint8Array): void {
    this.#checkRange(offset, data.length);
    if (!this.writable) throw new TandemError(ErrorCode.GrantDenied, `grant ${this.ref} is mapped read-only: a write is refused`);
    this.bytes.set(data, offset);
  }

  /** Ends the mapping; calling it again does nothing. */
  unmap(): void {
    if (!this.#mapped) return;
    this.#mapped = false;
    this.#source.release();
  }

  #checkMapped(): void {
    if (!this.#mapped) throw new TandemError(ErrorCode.InvalidState, `grant ${this.ref} was unmapped`);
  }

  #checkRange(offset: number, length: number): void {
    this.#checkMapped();
    if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length < 0 || offset + length > GRANT_PAGE_SIZE) {
      throw new TandemError(ErrorCode.OutOfRange, `${length} bytes at offset ${offset} of grant ${this.ref}: a grant is one page of ${GRANT_PAGE_SIZE} bytes`);
    }
  }
}
