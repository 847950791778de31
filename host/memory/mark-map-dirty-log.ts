/**
 * A dirty log over a *mark map* that the emulator writes itself: one byte per guest page, in the
 * emulator's own WebAssembly.Memory, set non-zero by every write to the page (v86 after its
 * modules are rewritten by host/emulators/v86/store-marks.ts). The byte's value says which
 * writer marked the page last; the log keeps it for the page's last marked epoch, so that a
 * verifying log (verifying-dirty-log.ts) can say how a page it finds unmarked was last written.
 *
 * A collect scans the map and clears it in one pass, with the guest paused; it reads
 * `pageCount` bytes, a quarter of a megabyte for a 1 GiB guest, instead of the whole RAM.
 */

import { ErrorCode, TandemError } from "../errors.ts";
import { DirtyLogBase } from "./dirty-log.ts";

/** Where the marks of a guest's pages are. */
export interface MarkMapRegion {
  /** The memory holding the map (the emulator's). */
  memory: WebAssembly.Memory;
  /** Byte offset of guest page 0's mark. */
  offset: number;
  /** Guest pages, one mark each. */
  pageCount: number;
}

/** A dirty log read from a mark map the emulator writes. */
export class MarkMapDirtyLog extends DirtyLogBase {
  readonly pageCount: number;
  readonly #memory: WebAssembly.Memory;
  readonly #offset: number;
  /** Per page: the mark seen at its last marked collect (0: none since arming). */
  readonly #lastMark: Uint8Array;
  /** Per page: the epoch of that collect. */
  readonly #lastEpoch: Uint32Array;
  #bytes: Uint8Array;

  constructor(region: MarkMapRegion) {
    super();
    const { memory, offset, pageCount } = region;
    if (!Number.isInteger(pageCount) || pageCount <= 0 || !Number.isInteger(offset) || offset < 0 || offset + pageCount > memory.buffer.byteLength) {
      throw new TandemError(ErrorCode.BadRegion, `a mark map of ${pageCount} pages at ${offset} does not lie inside its memory (${memory.buffer.byteLength} bytes)`);
    }
    this.pageCount = pageCount;
    this.#memory = memory;
    this.#offset = offset;
    this.#bytes = this.#view();
    this.#lastMark = new Uint8Array(pageCount);
    this.#lastEpoch = new Uint32Array(pageCount);
  }

  /**
   * The mark page `page` had at the last collect that found it marked, and that collect's epoch
   * (the epoch count before it); undefined if no collect found it marked since the log was armed.
   */
  lastMark(page: number): { mark: number; epoch: number } | undefined {
    const mark = this.#lastMark[page];
    return mark === 0 ? undefined : { mark, epoch: this.#lastEpoch[page] };
  }

  protected onArm(): void {
    this.#lastMark.fill(0);
  }

  protected take(full: boolean): Uint32Array {
    const map = this.#map();
    if (full) {
      // Marks made before the full epoch are part of it.
      map.fill(0);
      return Uint32Array.from({ length: this.pageCount }, (_, i) => i);
    }
    return this.#scanClear(map);
  }

  /** The indices of the non-zero bytes of `map`, zeroing them; words of four at a time where aligned. */
  #scanClear(map: Uint8Array): Uint32Array {
    const found: number[] = [];
    const epoch = this.epoch;
    const take = (page: number) => {
      found.push(page);
      this.#lastMark[page] = map[page];
      this.#lastEpoch[page] = epoch;
      map[page] = 0;
    };
    const pages = this.pageCount;
    let page = 0;
    // Bytes up to the first 4-aligned one, then words, then the tail.
    for (; page < pages && (map.byteOffset + page) % 4 !== 0; page++) if (map[page] !== 0) take(page);
    const aligned = (map.byteOffset + page) % 4 === 0;
    const words = new Uint32Array(map.buffer, aligned ? map.byteOffset + page : 0, aligned ? (pages - page) >>> 2 : 0);
    for (let w = 0; w < words.length; w++) {
      if (words[w] === 0) continue;
      const first = page + w * 4;
      for (let i = first; i < first + 4; i++) if (map[i] !== 0) take(i);
    }
    for (page += words.length * 4; page < pages; page++) if (map[page] !== 0) take(page);
    return Uint32Array.from(found);
  }

  #map(): Uint8Array {
    // An unshared memory that grew has a new buffer, and views of the old one are empty.
    if (this.#bytes.buffer !== this.#memory.buffer) this.#bytes = this.#view();
    return this.#bytes;
  }

  #view(): Uint8Array {
    return new Uint8Array(this.#memory.buffer, this.#offset, this.pageCount);
  }
}
