/**
 * Rewrites a Wasm module so that every instruction that writes its memory also marks the page
 * it wrote in a *mark map*: one byte per 4 KiB page of the whole 32-bit memory (1 MiB), at a
 * fixed address in the same memory. v86's own module and every module its JIT compiles are
 * rewritten so, and together with the JavaScript writers wrapped in v86-tracking.ts that is
 * every write to guest RAM: a Wasm module can write its memory only through the instructions
 * handled here, so the marks are complete by construction, not by knowing v86's write paths.
 *
 * Each store (`iNN/fNN.store*`, `v128.store`, `v128.storeN_lane`, atomic stores, read-modify-
 * writes and compare-exchanges) becomes: its operands saved in added locals, the store itself,
 * then one `i32.store8` of the mark at `map + ((address + offset) >>> 12)`, and a second one for
 * the last byte's page when the store is wider than a byte (an unaligned store may cross a page).
 * The mark goes after the store, so a store that traps marks nothing, and the address the mark
 * uses is one the store succeeded at, so `address + offset` cannot wrap. `memory.fill`,
 * `memory.copy` and `memory.init` are followed by a call to an appended function that marks
 * their destination range. Appending a type and a function renumbers nothing.
 *
 * Any instruction the reader does not know (GC, try_table, a memory other than memory 0, a
 * 64-bit memory) refuses the module with E_EMULATOR_CHANGED: an instruction skipped wrongly
 * could hide a store. Layouts and opcodes from the WebAssembly core specification (binary
 * format, 5.4 instructions), with the SIMD, threads, bulk-memory, reference-types, tail-call
 * and legacy exception-handling proposals.
 */

import { Reader, SectionId, concat, leb, refusal, section, sections, sleb32, type Section } from "./wasm-binary.ts";

/** Bytes of the mark map: one per 4 KiB page of a 4 GiB memory. */
export const MARK_MAP_BYTES = 1 << 20;
/** log2 of the page size the map marks. */
export const MARK_PAGE_SHIFT = 12;
const PAGE_BYTES = 1 << MARK_PAGE_SHIFT;
const PAGE_MASK = PAGE_BYTES - 1;
/** Most locals V8 allows a function (the tightest of the three runtimes' engines). */
const MAX_LOCALS = 50_000;

/** Where the marks go and what they say. */
export interface StoreMarkOptions {
  /** Byte address of the mark map in the module's memory. */
  map: number;
  /** The byte written for each page written, 1 to 255: it names the writer (see MarkedBy). */
  mark: number;
}

const broken = refusal("to mark its stores");

/** Value types of the operands that are saved (spec 5.3.1). */
const I32 = 0x7f;
const I64 = 0x7e;
const F32 = 0x7d;
const F64 = 0x7c;
const V128 = 0x7b;

/** Opcodes written by the rewrite. */
const OP_CALL = 0x10;
const OP_LOCAL_GET = 0x20;
const OP_LOCAL_SET = 0x21;
const OP_LOCAL_TEE = 0x22;
const OP_I32_STORE8 = 0x3a;
const OP_I32_CONST = 0x41;
const OP_I32_EQZ = 0x45;
const OP_I32_ADD = 0x6a;
const OP_I32_SUB = 0x6b;
const OP_I32_SHR_U = 0x76;
const OP_I32_AND = 0x71;
const OP_I32_GT_U = 0x4b;
const OP_IF = 0x04;
const BLOCK_EMPTY = 0x40;
const OP_BR_IF = 0x0d;
const OP_END = 0x0b;
const PREFIX_FC = 0xfc;
const PREFIX_SIMD = 0xfd;
const PREFIX_ATOMIC = 0xfe;
const FC_MEMORY_FILL = 11;
const FUNC_TYPE = 0x60;

/** A memory write: the types of its operands after the address, and the bytes it writes (0: a range). */
interface Write {
  operands: readonly number[];
  size: number;
  offset: number;
}

/** Plain stores 0x36-0x3e (spec 5.4.6): value type and width. */
const STORES: readonly (readonly [number, number])[] = [
  [I32, 4], [I64, 8], [F32, 4], [F64, 8], [I32, 1], [I32, 2], [I64, 1], [I64, 2], [I64, 4],
];
/** The seven widths of each atomic store / read-modify-write / compare-exchange group (threads proposal). */
const ATOMIC_VARIANTS: readonly (readonly [number, number])[] = [
  [I32, 4], [I64, 8], [I32, 1], [I32, 2], [I64, 1], [I64, 2], [I64, 4],
];

/** A growable byte buffer for the rewritten code. */
class Output {
  bytes = new Uint8Array(1024);
  length = 0;
  #room(n: number): void {
    if (this.length + n <= this.bytes.length) return;
    const bigger = new Uint8Array(Math.max(this.bytes.length * 2, this.length + n));
    bigger.set(this.bytes.subarray(0, this.length));
    this.bytes = bigger;
  }
  push(...values: number[]): void {
    this.#room(values.length);
    for (const v of values) this.bytes[this.length++] = v;
  }
  copy(from: Uint8Array, start: number, end: number): void {
    this.#room(end - start);
    this.bytes.set(from.subarray(start, end), this.length);
    this.length += end - start;
  }
  take(): Uint8Array {
    return this.bytes.slice(0, this.length);
  }
}

/** The locals a function's rewrite adds, made when first needed. */
class Scratch {
  readonly added: number[] = [];
  readonly #slots = new Map<string, number>();
  constructor(readonly first: number) {}
  get(type: number, n = 0): number {
    const key = `${type}:${n}`;
    let index = this.#slots.get(key);
    if (index === undefined) {
      index = this.first + this.added.length;
      this.added.push(type);
      this.#slots.set(key, index);
    }
    return index;
  }
}

/** Reads a memarg (spec 5.4.6); refuses one that names another memory. Returns the offset. */
function memarg(reader: Reader): number {
  const flags = reader.u32();
  if (flags & 0x40) {
    const memory = reader.u32();
    if (memory !== 0) throw broken(`an instruction at byte ${reader.at} uses memory ${memory}`);
  }
  return reader.u32();
}

/**
 * Reads one instruction at `reader.at` and returns what it writes to memory, or undefined when
 * it writes none. Every immediate is read, so the next instruction starts at `reader.at`.
 */
function instruction(reader: Reader): Write | undefined {
  const op = reader.byte();
  if (op >= 0x45 && op <= 0xc4) return undefined; // numeric instructions: no immediates
  if (op >= 0x28 && op <= 0x35) {
    memarg(reader);
    return undefined;
  }
  if (op >= 0x36 && op <= 0x3e) {
    const [type, size] = STORES[op - 0x36];
    return { operands: [type], size, offset: memarg(reader) };
  }
  switch (op) {
    case 0x00: case 0x01: case 0x05: case 0x0a: case 0x0b: case 0x0f: case 0x19: case 0x1a: case 0x1b:
    case 0xd1: case 0xd3: case 0xd4:
      return undefined;
    case 0x02: case 0x03: case 0x04: case 0x06: // block, loop, if, try: a block type (s33)
    case 0xd0: // ref.null: a heap type (s33)
      reader.signed(33);
      return undefined;
    case 0x07: case 0x08: case 0x09: case 0x18: case 0x0c: case 0x0d: case 0x10: case 0x12: case 0x14: case 0x15:
    case 0x20: case 0x21: case 0x22: case 0x23: case 0x24: case 0x25: case 0x26: case 0xd2: case 0xd5: case 0xd6:
      reader.u32();
      return undefined;
    case 0x0e: { // br_table
      const count = reader.u32();
      for (let i = 0; i <= count; i++) reader.u32();
      return undefined;
    }
    case 0x11: case 0x13: // call_indirect, return_call_indirect
      reader.u32();
      reader.u32();
      return undefined;
    case 0x1c: { // select with types
      const count = reader.u32();
      for (let i = 0; i < count; i++) valueType(reader);
      return undefined;
    }
    case 0x3f: case 0x40: { // memory.size, memory.grow
      const memory = reader.u32();
      if (memory !== 0) throw broken(`an instruction at byte ${reader.at} uses memory ${memory}`);
      return undefined;
    }
    case 0x41: reader.signed(32); return undefined;
    case 0x42: reader.signed(64); return undefined;
    case 0x43: reader.skip(4); return undefined;
    case 0x44: reader.skip(8); return undefined;
    case PREFIX_FC: return prefixedFC(reader);
    case PREFIX_SIMD: return prefixedSimd(reader);
    case PREFIX_ATOMIC: return prefixedAtomic(reader);
    default:
      throw broken(`unknown opcode 0x${op.toString(16)} at byte ${reader.at - 1}`);
  }
}

function oneMemory(reader: Reader): void {
  const memory = reader.u32();
  if (memory !== 0) throw broken(`an instruction at byte ${reader.at} uses memory ${memory}`);
}

/** 0xFC: saturating truncations, bulk memory, tables (spec 5.4.1, 5.4.5, 5.4.6). */
function prefixedFC(reader: Reader): Write | undefined {
  const op = reader.u32();
  if (op <= 7) return undefined;
  switch (op) {
    case 8: // memory.init data memory
      reader.u32();
      oneMemory(reader);
      return { operands: [I32, I32], size: 0, offset: 0 };
    case 10: // memory.copy dst src
      oneMemory(reader);
      oneMemory(reader);
      return { operands: [I32, I32], size: 0, offset: 0 };
    case 11: // memory.fill
      oneMemory(reader);
      return { operands: [I32, I32], size: 0, offset: 0 };
    case 9: case 13: case 15: case 16: case 17:
      reader.u32();
      return undefined;
    case 12: case 14:
      reader.u32();
      reader.u32();
      return undefined;
    default:
      throw broken(`unknown opcode 0xfc ${op} at byte ${reader.at}`);
  }
}

/** 0xFD: SIMD (spec 5.4.8, with relaxed SIMD up to 0x113). */
function prefixedSimd(reader: Reader): Write | undefined {
  const op = reader.u32();
  if (op <= 10 || op === 92 || op === 93) {
    memarg(reader);
    return undefined;
  }
  if (op === 11) return { operands: [V128], size: 16, offset: memarg(reader) };
  if (op === 12 || op === 13) {
    reader.skip(16);
    return undefined;
  }
  if (op >= 21 && op <= 34) {
    reader.skip(1);
    return undefined;
  }
  if (op >= 84 && op <= 91) {
    const offset = memarg(reader);
    reader.skip(1); // lane
    return op >= 88 ? { operands: [V128], size: 1 << (op - 88), offset } : undefined;
  }
  if (op > 0x113) throw broken(`unknown opcode 0xfd ${op} at byte ${reader.at}`);
  return undefined;
}

/** 0xFE: atomics (threads proposal). */
function prefixedAtomic(reader: Reader): Write | undefined {
  const op = reader.u32();
  if (op === 3) { // atomic.fence
    reader.skip(1);
    return undefined;
  }
  if (op <= 2 || (op >= 0x10 && op <= 0x16)) { // notify, waits, loads: they write nothing
    memarg(reader);
    return undefined;
  }
  if (op >= 0x17 && op <= 0x4e) {
    const offset = memarg(reader);
    if (op <= 0x1d) {
      const [type, size] = ATOMIC_VARIANTS[op - 0x17];
      return { operands: [type], size, offset };
    }
    const [type, size] = ATOMIC_VARIANTS[(op - 0x1e) % 7];
    return { operands: op >= 0x48 ? [type, type] : [type], size, offset };
  }
  throw broken(`unknown opcode 0xfe ${op} at byte ${reader.at}`);
}

/** Skips a value type: one byte, or a reference type with its heap type. */
function valueType(reader: Reader): void {
  const type = reader.byte();
  if (type === 0x63 || type === 0x64) reader.signed(33);
}

/** Parameter and result counts of the type section's function types. */
function typeShapes(bytes: Uint8Array, types: Section): { params: number; results: number }[] {
  const reader = new Reader(bytes, types.start, types.end, broken);
  const count = reader.u32();
  const shapes: { params: number; results: number }[] = [];
  for (let i = 0; i < count; i++) {
    const form = reader.byte();
    if (form !== FUNC_TYPE) throw broken(`type ${i} is not a function type (form 0x${form.toString(16)})`);
    const n = reader.u32();
    for (let j = 0; j < n; j++) valueType(reader);
    const results = reader.u32();
    for (let j = 0; j < results; j++) valueType(reader);
    shapes.push({ params: n, results });
  }
  if (reader.at !== types.end) throw broken("its type section has bytes after its last entry");
  return shapes;
}

/** How many functions the module imports (they come first in the function index space). */
function importedFunctions(bytes: Uint8Array, imports: Section | undefined): number {
  if (!imports) return 0;
  const reader = new Reader(bytes, imports.start, imports.end, broken);
  let functions = 0;
  for (let i = 0, count = reader.u32(); i < count; i++) {
    reader.skip(reader.u32());
    reader.skip(reader.u32());
    const tag = reader.byte();
    if (tag === 0x00) {
      reader.u32();
      functions++;
    } else if (tag === 0x01 || tag === 0x02) {
      if (tag === 0x01) valueType(reader);
      const flags = reader.byte();
      if (flags > 3) throw broken(`unknown limits flags 0x${flags.toString(16)}`);
      reader.u32();
      if (flags & 1) reader.u32();
    } else if (tag === 0x03) {
      valueType(reader);
      reader.byte();
    } else if (tag === 0x04) {
      reader.byte();
      reader.u32();
    } else {
      throw broken(`an import of unknown kind 0x${tag.toString(16)}`);
    }
  }
  if (reader.at !== imports.end) throw broken("its import section has bytes after its last entry");
  return functions;
}

/** The type index of each defined function. */
function functionTypes(bytes: Uint8Array, functions: Section): number[] {
  const reader = new Reader(bytes, functions.start, functions.end, broken);
  const types: number[] = [];
  for (let i = 0, count = reader.u32(); i < count; i++) types.push(reader.u32());
  if (reader.at !== functions.end) throw broken("its function section has bytes after its last entry");
  return types;
}

/** The signed LEB128 at `at` (up to 33 bits, as block types and i32 constants are). */
function signedAt(bytes: Uint8Array, at: number): number {
  let value = 0;
  let shift = 0;
  let b: number;
  do {
    b = bytes[at++];
    value += (b & 0x7f) * 2 ** shift;
    shift += 7;
  } while (b & 0x80 && shift < 35);
  return b & 0x40 ? value - 2 ** shift : value;
}

/** Stack effects of the numeric opcodes 0x45-0xc4: how many operands each pops (it pushes one). */
function numericPops(op: number): number {
  if (op === 0x45 || op === 0x50 || (op >= 0x67 && op <= 0x69) || (op >= 0x79 && op <= 0x7b) ||
      (op >= 0x8b && op <= 0x91) || (op >= 0x99 && op <= 0x9f) || op >= 0xa7) return 1;
  return 2;
}

/**
 * What is known of the operand stack as the code runs: per slot, the i32 constant it holds, or
 * null. Used to see stores whose address is a constant below the mark map: below it lie only
 * the module's stack and statics (v86's registers and flags), never guest RAM, which v86
 * allocates past the map. Such stores need no mark, and they are most of what v86 stores, in its
 * interpreter and in its JIT's code alike.
 *
 * Only what is certain is kept. Within a block the slots below the block's start are out of
 * reach (popping past what is known yields null); at the block's `end` the stack before it comes
 * back with its results unknown. After a branch, a call, or any instruction not modelled here,
 * nothing of the current block is known. Wasm's control flow is structured, so nothing can
 * enter a block's code except at its start.
 */
class KnownStack {
  #stack: (number | null)[] = [];
  readonly #outer: ((number | null)[] | undefined)[] = [];
  constructor(readonly types: readonly { params: number; results: number }[]) {}

  /** The constant `depth` slots below the top (0: the top), if known. */
  constant(depth: number): number | null {
    return this.#stack[this.#stack.length - 1 - depth] ?? null;
  }

  #pop(count: number): void {
    this.#stack.length = Math.max(0, this.#stack.length - count);
  }

  #enter(bytes: Uint8Array, at: number): void {
    const type = signedAt(bytes, at);
    const shape = type === -64 ? { params: 0, results: 0 } : type < 0 ? { params: 0, results: 1 } : this.types[type];
    if (shape) {
      this.#pop(shape.params);
      this.#outer.push([...this.#stack, ...new Array<null>(shape.results).fill(null)]);
    } else {
      this.#outer.push(undefined);
    }
    this.#stack = [];
  }

  /** Steps over the instruction at `at`. */
  step(bytes: Uint8Array, at: number): void {
    const op = bytes[at];
    if (op >= 0x45 && op <= 0xc4) {
      this.#pop(numericPops(op));
      this.#stack.push(null);
      return;
    }
    if (op >= 0x28 && op <= 0x35) {
      this.#pop(1);
      this.#stack.push(null);
      return;
    }
    if (op >= 0x36 && op <= 0x3e) {
      this.#pop(2);
      return;
    }
    switch (op) {
      case 0x41: this.#stack.push(signedAt(bytes, at + 1) | 0); return;
      case 0x42: case 0x43: case 0x44: case 0x20: case 0x23: case 0x3f: this.#stack.push(null); return;
      case 0x21: case 0x24: case 0x1a: case 0x0d: this.#pop(1); return;
      case 0x22: case 0x40: this.#pop(1); this.#stack.push(null); return;
      case 0x1b: this.#pop(3); this.#stack.push(null); return;
      case 0x02: case 0x03: case 0x06: this.#enter(bytes, at + 1); return; // block, loop, try
      case 0x04: this.#pop(1); this.#enter(bytes, at + 1); return;
      case 0x0b: case 0x18: this.#stack = this.#outer.pop() ?? []; return; // end, delegate (ends a try)
      default: this.#stack = []; // else, branches, calls and the rest: nothing known
    }
  }
}

/**
 * Emits the marks of a write `size` bytes wide at the effective address `offset` past local
 * `address`: the first byte's page, and, only when the write crosses into the next page (a
 * branch almost never taken), that page too. Measured against marking both pages always, the
 * branch costs less than the second store it saves.
 */
function markStore(out: Output, address: number, offset: number, size: number, options: StoreMarkOptions): void {
  const local = leb(address);
  const store8 = (map: number) => [OP_I32_CONST, ...sleb32(options.mark), OP_I32_STORE8, 0, ...leb(map)];
  const page = [OP_I32_CONST, MARK_PAGE_SHIFT, OP_I32_SHR_U];
  out.push(OP_LOCAL_GET, ...local);
  if (offset !== 0) out.push(OP_I32_CONST, ...sleb32(offset), OP_I32_ADD);
  if (size === 1) {
    out.push(...page, ...store8(options.map));
    return;
  }
  out.push(OP_LOCAL_TEE, ...local, ...page, ...store8(options.map));
  out.push(OP_LOCAL_GET, ...local, OP_I32_CONST, ...sleb32(PAGE_MASK), OP_I32_AND, OP_I32_CONST, ...sleb32(PAGE_BYTES - size), OP_I32_GT_U,
    OP_IF, BLOCK_EMPTY, OP_LOCAL_GET, ...local, ...page, ...store8(options.map + 1), OP_END);
}

/** Rewrites one function body (locals and code) into `out`. */
function rewriteBody(bytes: Uint8Array, start: number, end: number, params: number, types: readonly { params: number; results: number }[],
  markRange: number, options: StoreMarkOptions, out: Output): void {
  const reader = new Reader(bytes, start, end, broken);
  const groups = reader.u32();
  const groupsStart = reader.at;
  let locals = params;
  for (let i = 0; i < groups; i++) {
    locals += reader.u32();
    valueType(reader);
    if (locals > MAX_LOCALS) throw broken(`a function has more than ${MAX_LOCALS} locals`);
  }
  const groupsEnd = reader.at;
  const scratch = new Scratch(locals);
  const code = new Output();
  let copied = reader.at;
  const known = new KnownStack(types);
  while (reader.at < end) {
    const at = reader.at;
    const write = instruction(reader);
    const address = write ? known.constant(write.operands.length) : null;
    known.step(bytes, at);
    if (!write) continue;
    if (write.size > 0 && address !== null && (address >>> 0) + write.offset + write.size <= options.map) continue;
    code.copy(bytes, copied, at);
    copied = reader.at;
    const addressLocal = scratch.get(I32, 0);
    const saved = write.operands.map((type, i) => scratch.get(type, i + 1));
    for (let i = saved.length - 1; i >= 0; i--) code.push(OP_LOCAL_SET, ...leb(saved[i]));
    code.push(OP_LOCAL_TEE, ...leb(addressLocal));
    for (const local of saved) code.push(OP_LOCAL_GET, ...leb(local));
    code.copy(bytes, at, reader.at);
    if (write.size === 0) code.push(OP_LOCAL_GET, ...leb(addressLocal), OP_LOCAL_GET, ...leb(saved[1]), OP_CALL, ...leb(markRange));
    else markStore(code, addressLocal, write.offset, write.size, options);
  }
  if (reader.at !== end || bytes[end - 1] !== OP_END) throw broken("a function body does not end with `end`");
  code.copy(bytes, copied, end);
  if (locals + scratch.added.length > MAX_LOCALS) throw broken(`a function has more than ${MAX_LOCALS} locals`);
  // The local declarations: the old groups, then one group per added local.
  const body = new Output();
  body.push(...leb(groups + scratch.added.length));
  body.copy(bytes, groupsStart, groupsEnd);
  for (const type of scratch.added) body.push(1, type);
  body.copy(code.bytes, 0, code.length);
  out.push(...leb(body.length));
  out.copy(body.bytes, 0, body.length);
}

/** The appended function `(dst: i32, len: i32)`: marks every page of `[dst, dst + len)`, nothing when len is 0. */
function markRangeBody(options: StoreMarkOptions): number[] {
  const page = (local: number[]) => [...local, OP_I32_CONST, MARK_PAGE_SHIFT, OP_I32_SHR_U];
  const dst = [OP_LOCAL_GET, 0];
  const lastByte = [OP_LOCAL_GET, 0, OP_LOCAL_GET, 1, OP_I32_ADD, OP_I32_CONST, 1, OP_I32_SUB];
  const code = [
    0, // no locals
    OP_LOCAL_GET, 1, OP_I32_EQZ, OP_BR_IF, 0,
    ...page(dst), OP_I32_CONST, ...sleb32(options.map), OP_I32_ADD,
    OP_I32_CONST, ...sleb32(options.mark),
    ...page(lastByte), ...page(dst), OP_I32_SUB, OP_I32_CONST, 1, OP_I32_ADD,
    PREFIX_FC, FC_MEMORY_FILL, 0,
    OP_END,
  ];
  return [...leb(code.length), ...code];
}

/**
 * Returns a copy of `bytes` in which every write to memory also marks its pages in the mark map
 * at `options.map` (see the file comment). A module without code is returned as it is. A module
 * the reader does not fully understand is refused with E_EMULATOR_CHANGED.
 */
export function markModuleStores(bytes: Uint8Array, options: StoreMarkOptions): Uint8Array<ArrayBuffer> {
  if (!Number.isInteger(options.map) || options.map < 0 || options.map + MARK_MAP_BYTES > 2 ** 32) throw broken(`the mark map at ${options.map} does not fit a 32-bit memory`);
  if (!Number.isInteger(options.mark) || options.mark < 1 || options.mark > 255) throw broken(`the mark ${options.mark} is not a byte above 0`);
  const all = sections(bytes, broken);
  const find = (id: number) => {
    const found = all.filter((s) => s.id === id);
    if (found.length > 1) throw broken(`it has ${found.length} sections of id ${id}`);
    return found[0] as Section | undefined;
  };
  const code = find(SectionId.Code);
  if (!code) return Uint8Array.prototype.slice.call(bytes) as Uint8Array<ArrayBuffer>;
  const types = find(SectionId.Type);
  const functions = find(SectionId.Function);
  if (!types || !functions) throw broken("it has code but no type or function section");
  const shapes = typeShapes(bytes, types);
  const typeOf = functionTypes(bytes, functions);
  const markRange = importedFunctions(bytes, find(SectionId.Import)) + typeOf.length;
  const markRangeType = shapes.length;

  const reader = new Reader(bytes, code.start, code.end, broken);
  const count = reader.u32();
  if (count !== typeOf.length) throw broken(`it declares ${typeOf.length} functions and has ${count} bodies`);
  const out = new Output();
  out.push(...leb(count + 1));
  for (let i = 0; i < count; i++) {
    const size = reader.u32();
    const start = reader.at;
    reader.skip(size);
    const type = typeOf[i];
    if (type >= shapes.length) throw broken(`function ${i} has type ${type}, past the ${shapes.length} types`);
    rewriteBody(bytes, start, reader.at, shapes[type].params, shapes, markRange, options, out);
  }
  if (reader.at !== code.end) throw broken("its code section has bytes after its last body");
  out.push(...markRangeBody(options));

  const parts: Uint8Array[] = [bytes.subarray(0, 8)];
  for (const each of all) {
    if (each === types) {
      const entries = new Reader(bytes, types.start, types.end, broken);
      const n = entries.u32();
      parts.push(section(SectionId.Type, [...leb(n + 1), ...bytes.subarray(entries.at, types.end), FUNC_TYPE, 2, I32, I32, 0]));
    } else if (each === functions) {
      parts.push(section(SectionId.Function, [...leb(typeOf.length + 1), ...typeOf.flatMap((t) => leb(t)), ...leb(markRangeType)]));
    } else if (each === code) {
      parts.push(section(SectionId.Code, out.take()));
    } else {
      parts.push(bytes.subarray(each.header, each.end));
    }
  }
  return concat(parts);
}
