/**
 * Device state as a delta against the previous checkpoint's (record DEVICE_STATE_DELTA,
 * docs/checkpoint-stream.md). An emulator's device state is mostly buffers that do not change
 * from one checkpoint to the next (video memory, disk controllers' transfer buffers), so only the
 * 4 KiB pages of the state that changed are sent, each as a page delta (page-delta.ts) when that
 * is smaller, else whole.
 *
 * Delta layout, after the record's u32 device and u32 zero:
 *
 * | offset | size | field |
 * |---|---|---|
 * | 0 | u32 | length of the new state, in bytes |
 * | 4 | u32 | count of the entries that follow |
 * | 8 | ... | count x { u32 page, u32 len, len bytes, zero pad to 4 } |
 *
 * An entry's `len` with bit 31 set holds `len & 0x7fffffff` bytes of the page as they are (the
 * last page of the state may be partial); without it, a page delta of `len` bytes that turns the
 * previous state's page into the new one. The previous state is read as zeros past its end. Pages
 * not listed are as in the previous state. Entries are in ascending page order.
 */

import { ErrorCode, TandemError } from "../errors.ts";
import { Heap } from "../wasm/heap.ts";
import { kernelsFor, type KernelFlavor, type Kernels } from "../wasm/kernels.ts";
import { PageDeltaCodec } from "./page-delta.ts";

/** Bytes per page of a device state. */
export const DEVICE_PAGE_SIZE = 4096;
/** Largest device state a delta may describe (v86's is about 1 MiB; a bound for hostile input). */
export const MAX_DEVICE_STATE_BYTES = 256 << 20;
/** Bit 31 of an entry's length: the page's bytes as they are. */
const RAW = 0x80000000;
const HEAD_BYTES = 8;
const ENTRY_HEAD_BYTES = 8;

const pad4 = (n: number) => Math.ceil(n / 4) * 4;

/**
 * The sender's side: remembers the last state it was given, and encodes the next one as a delta
 * against it. Both the state and its predecessor sit in a heap of its own, where the compare
 * kernel finds the changed pages.
 */
export class DeviceStateEncoder {
  readonly #codec: PageDeltaCodec;
  readonly #flavor: KernelFlavor | undefined;
  #heap: Heap | undefined;
  #kernels: Kernels | undefined;
  #capacity = 0;
  #base = 0;
  #next = 0;
  #list = 0;
  /** Pages of the state in `#base`; 0 before the first state. */
  #basePages = 0;
  #hasBase = false;

  constructor(options: { kernels?: KernelFlavor } = {}) {
    this.#flavor = options.kernels;
    this.#codec = new PageDeltaCodec({ kernels: options.kernels });
  }

  /** Forgets the last state: the next {@link encode} returns undefined (send it whole). */
  reset(): void {
    this.#hasBase = false;
  }

  /**
   * The delta that turns the previous state into `state`, or undefined when there is no previous
   * state or the delta would not be smaller than `state`: then the caller sends `state` whole.
   * Either way `state` becomes the base of the next call.
   */
  encode(state: Uint8Array): Uint8Array | undefined {
    if (state.length > MAX_DEVICE_STATE_BYTES) {
      throw new TandemError(ErrorCode.BadArgument, `a device state of ${state.length} bytes; at most ${MAX_DEVICE_STATE_BYTES}`);
    }
    const pages = Math.ceil(state.length / DEVICE_PAGE_SIZE);
    this.#ensure(pages);
    const heap = this.#heap!;
    const u8 = heap.u8;
    u8.set(state, this.#next);
    u8.fill(0, this.#next + state.length, this.#next + pages * DEVICE_PAGE_SIZE);
    // Past the old state's end the base reads as zeros (it was zeroed when it shrank or was made).
    const hadBase = this.#hasBase;
    const changed = hadBase ? this.#kernels!.pagesCompare(this.#next, this.#base, pages, this.#list) : 0;
    const parts: Uint8Array[] = [];
    let bytes = HEAD_BYTES;
    if (hadBase) {
      const list = heap.u32.slice(this.#list >>> 2, (this.#list >>> 2) + changed);
      for (const page of list) {
        const at = page * DEVICE_PAGE_SIZE;
        const next = u8.subarray(this.#next + at, this.#next + at + DEVICE_PAGE_SIZE);
        const delta = this.#codec.encode(u8.subarray(this.#base + at, this.#base + at + DEVICE_PAGE_SIZE), next);
        const body = delta ?? state.subarray(at, Math.min(at + DEVICE_PAGE_SIZE, state.length));
        const entry = new Uint8Array(ENTRY_HEAD_BYTES + pad4(body.length));
        const view = new DataView(entry.buffer);
        view.setUint32(0, page, true);
        view.setUint32(4, delta ? body.length : (body.length | RAW) >>> 0, true);
        entry.set(body, ENTRY_HEAD_BYTES);
        parts.push(entry);
        bytes += entry.length;
      }
    }
    // The new state becomes the base; what lies past its end is zeroed for the next compare.
    u8.copyWithin(this.#base, this.#next, this.#next + pages * DEVICE_PAGE_SIZE);
    if (this.#basePages > pages) u8.fill(0, this.#base + pages * DEVICE_PAGE_SIZE, this.#base + this.#basePages * DEVICE_PAGE_SIZE);
    this.#basePages = pages;
    this.#hasBase = true;
    if (!hadBase || bytes >= state.length) return undefined;
    const out = new Uint8Array(bytes);
    const view = new DataView(out.buffer);
    view.setUint32(0, state.length, true);
    view.setUint32(4, parts.length, true);
    let at = HEAD_BYTES;
    for (const part of parts) {
      out.set(part, at);
      at += part.length;
    }
    return out;
  }

  /** Room for states of `pages` pages; a new heap keeps the base. */
  #ensure(pages: number): void {
    if (pages <= this.#capacity && this.#heap) return;
    const capacity = Math.max(pages, this.#capacity * 2, 1);
    const heap = Heap.create(2 * capacity * DEVICE_PAGE_SIZE + capacity * 4 + 1024);
    const base = heap.alloc(capacity * DEVICE_PAGE_SIZE, DEVICE_PAGE_SIZE);
    const next = heap.alloc(capacity * DEVICE_PAGE_SIZE, DEVICE_PAGE_SIZE);
    const list = heap.alloc(capacity * 4);
    if (this.#heap && this.#hasBase) {
      heap.u8.set(this.#heap.u8.subarray(this.#base, this.#base + this.#basePages * DEVICE_PAGE_SIZE), base);
    }
    this.#heap = heap;
    this.#kernels = kernelsFor(heap, this.#flavor);
    this.#capacity = capacity;
    this.#base = base;
    this.#next = next;
    this.#list = list;
  }
}

/**
 * The state a delta from {@link DeviceStateEncoder.encode} describes, given the state it was made
 * against (`base`, left as it is). A delta that does not fit `base` or is malformed throws
 * E_STREAM_FORMAT and returns nothing.
 */
export function applyDeviceStateDelta(base: Uint8Array, delta: Uint8Array, codec: PageDeltaCodec): Uint8Array {
  const fail = (what: string): never => {
    throw new TandemError(ErrorCode.StreamFormat, `a device-state delta ${what}`);
  };
  if (codec.pageSize !== DEVICE_PAGE_SIZE) fail(`needs a codec of ${DEVICE_PAGE_SIZE}-byte pages`);
  if (delta.length < HEAD_BYTES) fail(`of ${delta.length} bytes is shorter than its head`);
  const view = new DataView(delta.buffer, delta.byteOffset, delta.length);
  const length = view.getUint32(0, true);
  const count = view.getUint32(4, true);
  if (length > MAX_DEVICE_STATE_BYTES) fail(`describes ${length} bytes; at most ${MAX_DEVICE_STATE_BYTES}`);
  const pages = Math.ceil(length / DEVICE_PAGE_SIZE);
  const out = new Uint8Array(pages * DEVICE_PAGE_SIZE);
  out.set(base.subarray(0, Math.min(base.length, out.length)));
  let at = HEAD_BYTES;
  let previous = -1;
  for (let i = 0; i < count; i++) {
    if (delta.length - at < ENTRY_HEAD_BYTES) fail(`entry ${i} of ${count} runs past its end`);
    const page = view.getUint32(at, true);
    const word = view.getUint32(at + 4, true);
    const raw = (word & RAW) !== 0;
    const len = word & ~RAW;
    if (page >= pages || page <= previous) fail(`entry ${i}: page ${page} is not after page ${previous} and inside ${pages} pages`);
    const end = at + ENTRY_HEAD_BYTES + pad4(len);
    if (end > delta.length) fail(`entry ${i}: ${len} bytes run past its end`);
    const body = delta.subarray(at + ENTRY_HEAD_BYTES, at + ENTRY_HEAD_BYTES + len);
    const target = out.subarray(page * DEVICE_PAGE_SIZE, (page + 1) * DEVICE_PAGE_SIZE);
    if (raw) {
      if (len > DEVICE_PAGE_SIZE || page * DEVICE_PAGE_SIZE + len > length) fail(`entry ${i}: ${len} bytes of page ${page} pass the state's end`);
      target.set(body);
    } else {
      if (len > 2 * DEVICE_PAGE_SIZE) fail(`entry ${i}: a ${len}-byte page delta`);
      codec.apply(target, body);
    }
    previous = page;
    at = end;
  }
  if (at !== delta.length) fail(`has ${delta.length - at} bytes after its last entry`);
  return out.slice(0, length);
}
