/**
 * Reading and writing the parts of the WebAssembly binary format that tandem's rewrites of v86's
 * modules need (shared-memory.ts, store-marks.ts): LEB128 numbers, names and the section list.
 * Layouts from the WebAssembly core specification, binary format (section 5).
 */

import { ErrorCode, TandemError } from "../../errors.ts";

/** Magic and version: the first 8 bytes of every module. */
export const PREAMBLE_BYTES = 8;

/** Section ids (spec 5.5.2). */
export const SectionId = {
  Custom: 0,
  Type: 1,
  Import: 2,
  Function: 3,
  Memory: 5,
  Code: 10,
} as const;

/** A section of a module, by byte positions in it. */
export interface Section {
  id: number;
  /** Where its id byte is: a section kept as it is is copied from here, size field included. */
  header: number;
  start: number;
  end: number;
}

/** Makes the error a rewrite throws for a module it cannot read: always E_EMULATOR_CHANGED. */
export type Refusal = (what: string) => TandemError;

/** A refusal whose message starts with `doing` (what the rewrite was for). */
export function refusal(doing: string): Refusal {
  return (what) => new TandemError(ErrorCode.EmulatorChanged, `cannot rewrite the emulator's Wasm module ${doing}: ${what}`);
}

/** A cursor over module bytes that refuses to read past `end`. */
export class Reader {
  at: number;
  constructor(readonly bytes: Uint8Array, at: number, readonly end: number, readonly fail: Refusal) {
    this.at = at;
  }
  byte(): number {
    if (this.at >= this.end) throw this.fail(`it ends inside a section at byte ${this.at}`);
    return this.bytes[this.at++];
  }
  u32(): number {
    let result = 0;
    for (let shift = 0; shift < 35; shift += 7) {
      const b = this.byte();
      result += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) {
        if (result > 0xffffffff) throw this.fail(`a LEB128 u32 at byte ${this.at} is out of range`);
        return result;
      }
    }
    throw this.fail(`a LEB128 u32 at byte ${this.at} is longer than 5 bytes`);
  }
  /** Skips a signed LEB128 of at most `bits` bits (33 for block types, 32 or 64 for constants). */
  signed(bits: number): void {
    const most = Math.ceil(bits / 7);
    for (let i = 0; i < most; i++) if ((this.byte() & 0x80) === 0) return;
    throw this.fail(`a signed LEB128 at byte ${this.at} is longer than ${most} bytes`);
  }
  skip(count: number): void {
    if (count > this.end - this.at) throw this.fail(`a length of ${count} at byte ${this.at} runs past its section`);
    this.at += count;
  }
}

/** `value` as unsigned LEB128. */
export function leb(value: number): number[] {
  const out: number[] = [];
  do {
    let b = value & 0x7f;
    value = Math.floor(value / 128);
    if (value !== 0) b |= 0x80;
    out.push(b);
  } while (value !== 0);
  return out;
}

/** `value` (an int32, or a uint32 taken as its int32 bit pattern) as signed LEB128. */
export function sleb32(value: number): number[] {
  let v = value | 0;
  const out: number[] = [];
  for (;;) {
    const b = v & 0x7f;
    v >>= 7;
    if ((v === 0 && (b & 0x40) === 0) || (v === -1 && (b & 0x40) !== 0)) {
      out.push(b);
      return out;
    }
    out.push(b | 0x80);
  }
}

/** A name: its UTF-8 length, then its bytes. */
export function name(text: string): number[] {
  const bytes = new TextEncoder().encode(text);
  return [...leb(bytes.length), ...bytes];
}

/** A section: its id, its size, its body. */
export function section(id: number, body: ArrayLike<number>): Uint8Array {
  const size = leb(body.length);
  const out = new Uint8Array(1 + size.length + body.length);
  out[0] = id;
  out.set(size, 1);
  out.set(body as ArrayLike<number>, 1 + size.length);
  return out;
}

/** The sections of a module, in order; refuses a module without the magic or with a section past its end. */
export function sections(bytes: Uint8Array, fail: Refusal): Section[] {
  if (bytes.length < PREAMBLE_BYTES || bytes[0] !== 0x00 || bytes[1] !== 0x61 || bytes[2] !== 0x73 || bytes[3] !== 0x6d) {
    throw fail("it does not start with the Wasm magic");
  }
  const found: Section[] = [];
  const reader = new Reader(bytes, PREAMBLE_BYTES, bytes.length, fail);
  while (reader.at < bytes.length) {
    const header = reader.at;
    const id = reader.byte();
    const size = reader.u32();
    const start = reader.at;
    reader.skip(size);
    found.push({ id, header, start, end: reader.at });
  }
  return found;
}

/** The concatenation of `parts`. */
export function concat(parts: readonly Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}
