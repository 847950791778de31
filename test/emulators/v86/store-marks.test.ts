import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { MARK_MAP_BYTES, markModuleStores } from "../../../host/emulators/v86/store-marks.ts";
import { shareModuleMemory } from "../../../host/emulators/v86/shared-memory.ts";
import { ErrorCode, TandemError } from "../../../host/errors.ts";
import { seededRandom } from "../../../host/prng.ts";
import { errorCode } from "../../support/errors.ts";

const test = suite("store marks: every instruction that writes memory marks its pages in the mark map, and only those");

const I32 = 0x7f;
const I64 = 0x7e;
/** Layout of the test memory: the map after one page, "RAM" after the map. */
const MAP = 65536;
const RAM = MAP + MARK_MAP_BYTES;
const PAGES = RAM / 65536 + 8;
const MARK = 7;

const leb = (v: number): number[] => {
  const out: number[] = [];
  do {
    let b = v & 0x7f;
    v = Math.floor(v / 128);
    if (v) b |= 0x80;
    out.push(b);
  } while (v);
  return out;
};
const sleb = (v: number): number[] => {
  const out: number[] = [];
  for (;;) {
    const b = v & 0x7f;
    v >>= 7;
    if ((v === 0 && !(b & 0x40)) || (v === -1 && b & 0x40)) return [...out, b];
    out.push(b | 0x80);
  }
};
const sectionOf = (id: number, body: number[]) => [id, ...leb(body.length), ...body];
const str = (s: string) => [s.length, ...new TextEncoder().encode(s)];

/** A module importing memory "e"."m" and exporting `f(params) -> results` with `body` (ending in `end`). */
function moduleOf(params: number[], results: number[], body: number[], options: { data?: number[]; locals?: number[] } = {}): Uint8Array<ArrayBuffer> {
  const locals = options.locals ?? [];
  const code = [locals.length, ...locals.flatMap((t) => [1, t]), ...body];
  return Uint8Array.from([
    0x00, 0x61, 0x73, 0x6d, 1, 0, 0, 0,
    ...sectionOf(1, [1, 0x60, params.length, ...params, results.length, ...results]),
    ...sectionOf(2, [1, ...str("e"), ...str("m"), 0x02, 0x00, ...leb(PAGES)]),
    ...sectionOf(3, [1, 0]),
    ...sectionOf(7, [1, ...str("f"), 0x00, 0]),
    ...(options.data ? sectionOf(12, [1]) : []),
    ...sectionOf(10, [1, ...leb(code.length), ...code]),
    ...(options.data ? sectionOf(11, [1, 0x01, ...leb(options.data.length), ...options.data]) : []),
  ]);
}

type Fn = (...args: (number | bigint)[]) => unknown;

/** Instantiates `bytes` over a fresh memory; returns its `f` and the memory's bytes. */
function instance(bytes: Uint8Array<ArrayBuffer>): { f: Fn; mem: Uint8Array } {
  const memory = new WebAssembly.Memory({ initial: PAGES });
  const inst = new WebAssembly.Instance(new WebAssembly.Module(bytes), { e: { m: memory } });
  return { f: inst.exports.f as Fn, mem: new Uint8Array(memory.buffer) };
}

/** The pages (absolute, 4 KiB) marked in the map, with their marks. */
function marked(mem: Uint8Array): number[] {
  const pages: number[] = [];
  for (let i = 0; i < MARK_MAP_BYTES; i++) {
    if (mem[MAP + i] !== 0) {
      assert.is(mem[MAP + i], MARK, `page ${i} holds the mark given`);
      pages.push(i);
    }
  }
  return pages;
}

/**
 * Runs `f(args)` in the original module and in the marked one: the same result, the same memory
 * outside the map, and exactly the pages `[first, last]` of the write marked.
 */
function check(what: string, bytes: Uint8Array<ArrayBuffer>, args: (number | bigint)[], first: number, last: number): void {
  const plain = instance(bytes);
  const rewritten = markModuleStores(bytes, { map: MAP, mark: MARK });
  assert.ok(WebAssembly.validate(rewritten), `${what}: the rewritten module validates`);
  const tracked = instance(rewritten);
  assert.equal(tracked.f(...args), plain.f(...args), `${what}: same result`);
  assert.ok(plain.mem.subarray(RAM).every((b, i) => b === tracked.mem[RAM + i]), `${what}: same memory`);
  const expected: number[] = [];
  for (let p = first; p <= last; p++) expected.push(p);
  assert.equal(marked(tracked.mem), expected, `${what}: marks`);
}

/** Plain stores: opcode, value type, width. */
const STORES: [string, number, number, number][] = [
  ["i32.store", 0x36, I32, 4], ["i64.store", 0x37, I64, 8], ["f32.store", 0x38, 0x7d, 4], ["f64.store", 0x39, 0x7c, 8],
  ["i32.store8", 0x3a, I32, 1], ["i32.store16", 0x3b, I32, 2], ["i64.store8", 0x3c, I64, 1], ["i64.store16", 0x3d, I64, 2], ["i64.store32", 0x3e, I64, 4],
];
const valueOf = (type: number): number | bigint => (type === I64 ? 0x0102030405060708n : type === I32 ? 0x5a5a5a5a : 1.5);

test("every plain store marks the page it writes, and the next one too when it crosses into it", () => {
  for (const [name, op, type, size] of STORES) {
    for (const offset of [0, 20]) {
      const bytes = moduleOf([I32, type], [], [0x20, 0, 0x20, 1, op, 0, ...leb(offset), 0x0b]);
      const page = RAM + 5 * 4096;
      check(`${name} offset ${offset} mid-page`, bytes, [page + 100 - offset, valueOf(type)], (page >>> 12), (page >>> 12));
      check(`${name} offset ${offset} at the page's last bytes`, bytes, [page - size - offset, valueOf(type)], (page >>> 12) - 1, (page >>> 12) - 1);
      if (size > 1) check(`${name} offset ${offset} across pages`, bytes, [page - 1 - offset, valueOf(type)], (page >>> 12) - 1, page >>> 12);
    }
  }
});

test("SIMD: v128.store and the four store lanes mark as wide as they write", () => {
  const splat = [0x20, 1, 0xfd, 15]; // i8x16.splat of the second parameter
  const page = RAM + 3 * 4096;
  const store = moduleOf([I32, I32], [], [0x20, 0, ...splat, 0xfd, 11, 0, 0, 0x0b]);
  check("v128.store mid-page", store, [page + 64, 9], page >>> 12, page >>> 12);
  check("v128.store across pages", store, [page - 8, 9], (page >>> 12) - 1, page >>> 12);
  for (let lane = 0; lane < 4; lane++) {
    const size = 1 << lane;
    const bytes = moduleOf([I32, I32], [], [0x20, 0, ...splat, 0xfd, 88 + lane, 0, 0, 1, 0x0b]);
    check(`v128.store${size * 8}_lane mid-page`, bytes, [page + 8, 3], page >>> 12, page >>> 12);
    if (size > 1) check(`v128.store${size * 8}_lane across pages`, bytes, [page - 1, 3], (page >>> 12) - 1, page >>> 12);
  }
});

test("atomics: stores, read-modify-writes and compare-exchanges mark their page and keep their results", () => {
  const widths = [[I32, 4], [I64, 8], [I32, 1], [I32, 2], [I64, 1], [I64, 2], [I64, 4]] as const;
  const page = RAM + 2 * 4096;
  widths.forEach(([type, size], i) => {
    const align = Math.log2(size);
    const store = moduleOf([I32, type], [], [0x20, 0, 0x20, 1, 0xfe, 0x17 + i, align, 0, 0x0b]);
    check(`atomic store ${i}`, store, [page + 64, valueOf(type)], page >>> 12, page >>> 12);
    for (let group = 0; group < 6; group++) {
      const rmw = moduleOf([I32, type], [type], [0x20, 0, 0x20, 1, 0xfe, 0x1e + group * 7 + i, align, 0, 0x0b]);
      check(`atomic rmw ${group}.${i}`, rmw, [page + 4096 - size, valueOf(type)], page >>> 12, page >>> 12);
    }
    const cmpxchg = moduleOf([I32, type, type], [type], [0x20, 0, 0x20, 1, 0x20, 2, 0xfe, 0x48 + i, align, 0, 0x0b]);
    check(`atomic cmpxchg ${i}`, cmpxchg, [page + 8, type === I64 ? 0n : 0, valueOf(type)], page >>> 12, page >>> 12);
  });
});

test("memory.fill, memory.copy and memory.init mark their whole destination; a length of 0 marks nothing", () => {
  const fill = moduleOf([I32, I32], [], [0x20, 0, 0x41, 0x2a, 0x20, 1, 0xfc, 11, 0, 0x0b]);
  check("fill across three pages", fill, [RAM + 4095, 4098], RAM >>> 12, (RAM >>> 12) + 2);
  check("fill of one byte", fill, [RAM + 10, 1], RAM >>> 12, RAM >>> 12);
  check("fill of nothing", fill, [RAM + 10, 0], 1, 0);
  const copy = moduleOf([I32, I32], [], [0x20, 0, 0x41, ...sleb(RAM + 60000), 0x20, 1, 0xfc, 10, 0, 0, 0x0b]);
  check("copy", copy, [RAM + 8190, 3], (RAM >>> 12) + 1, (RAM >>> 12) + 2);
  const init = moduleOf([I32, I32], [], [0x20, 0, 0x41, 0, 0x20, 1, 0xfc, 8, 0, 0, 0x0b], { data: [1, 2, 3, 4, 5, 6, 7, 8] });
  check("init", init, [RAM + 4093, 8], RAM >>> 12, (RAM >>> 12) + 1);
  // The last page of a 4 GiB memory cannot be had here; the end of this one is the edge case.
  check("fill to the end of the memory", fill, [PAGES * 65536 - 5000, 5000], (PAGES * 65536 - 5000) >>> 12, (PAGES * 65536 - 1) >>> 12);
});

test("stores at a constant address below the map (v86's registers) are not marked; above it, and computed ones, are", () => {
  const to = (address: number, value: number[]) => moduleOf([I32, I32], [], [0x41, ...sleb(address), ...value, 0x36, 0, 0, 0x0b]);
  check("const address below the map", to(64, [0x20, 1]), [0, 5], 1, 0);
  check("const address below the map, value computed in a block", to(64, [0x02, I32, 0x20, 1, 0x41, 3, 0x6a, 0x0b]), [0, 5], 1, 0);
  check("const address above the map", to(RAM + 64, [0x20, 1]), [0, 5], RAM >>> 12, RAM >>> 12);
  check("const address ending past the map's start", to(MAP - 2, [0x20, 1]), [0, 5], (MAP >>> 12) - 1, MAP >>> 12);
  // A block in between leaves the stack below it as it was.
  const after = moduleOf([I32, I32], [], [0x41, ...sleb(64), 0x20, 1, 0x41, 1, 0x04, 0x40, 0x0b, 0x36, 0, 0, 0x0b]);
  check("after an if, the address is still known", after, [0, 5], 1, 0);
  // An else forgets what its then-branch left: the address computed in an if's branches is marked.
  const branches = moduleOf([I32, I32], [], [0x20, 1, 0x04, I32, 0x41, ...sleb(RAM), 0x05, 0x41, ...sleb(RAM + 8192), 0x0b, 0x20, 1, 0x36, 0, 0, 0x0b]);
  check("an address chosen by an if", branches, [0, 5], RAM >>> 12, RAM >>> 12);
  // A try (legacy exception handling) is a block too: after its end, the stack inside the
  // enclosing block is not the one outside it. (Skipped where the runtime has no legacy try.)
  const tried = moduleOf([I32, I32], [], [0x41, ...sleb(64), 0x02, 0x40, 0x20, 0, 0x06, 0x40, 0x0b, 0x20, 1, 0x36, 0, 0, 0x0b, 0x1a, 0x0b]);
  if (WebAssembly.validate(tried)) check("a computed address after a try inside a block", tried, [RAM, 5], RAM >>> 12, RAM >>> 12);
  const delegated = moduleOf([I32, I32], [], [0x41, ...sleb(64), 0x02, 0x40, 0x20, 0, 0x06, 0x40, 0x18, 0, 0x20, 1, 0x36, 0, 0, 0x0b, 0x1a, 0x0b]);
  if (WebAssembly.validate(delegated)) check("a computed address after a try ended by delegate", delegated, [RAM, 5], RAM >>> 12, RAM >>> 12);
  const unknown = moduleOf([I32, I32], [], [0x41, ...sleb(64), 0x20, 0, 0x6a, 0x20, 1, 0x36, 0, 0, 0x0b]);
  check("a computed address is marked", unknown, [RAM, 5], (RAM + 64) >>> 12, (RAM + 64) >>> 12);
});

test("a store that traps marks nothing, and the rewrite adds its locals after the function's own", () => {
  const bytes = moduleOf([I32, I32], [], [0x20, 0, 0x20, 1, 0x21, 2, 0x20, 2, 0x36, 0, 0, 0x0b], { locals: [I32, I64] });
  const tracked = instance(markModuleStores(bytes, { map: MAP, mark: MARK }));
  assert.throws(() => tracked.f(PAGES * 65536 - 2, 1));
  assert.equal(marked(tracked.mem), []);
  tracked.f(RAM, 1);
  assert.equal(marked(tracked.mem), [RAM >>> 12]);
});

test("v86's module and a module its JIT would link: rewritten, they validate", () => {
  const v86 = new Uint8Array(readFileSync(fileURLToPath(new URL("v86.wasm", import.meta.resolve("v86")))));
  const shared = shareModuleMemory(v86);
  const rewritten = markModuleStores(shared.bytes, { map: shared.minPages * 65536, mark: 1 });
  assert.ok(WebAssembly.validate(rewritten));
  const before = new WebAssembly.Module(shared.bytes);
  const after = new WebAssembly.Module(rewritten);
  assert.equal(WebAssembly.Module.imports(after), WebAssembly.Module.imports(before));
  assert.equal(WebAssembly.Module.exports(after), WebAssembly.Module.exports(before));
});

test("modules the reader does not fully understand are refused with E_EMULATOR_CHANGED, and random damage gives nothing else", () => {
  const options = { map: MAP, mark: MARK };
  const cases: [string, Uint8Array][] = [
    ["no magic", Uint8Array.of(1, 2, 3, 4, 1, 0, 0, 0)],
    ["a GC instruction", moduleOf([], [], [0xfb, 0, 0x0b])],
    ["an unknown opcode", moduleOf([], [], [0xc5, 0x0b])],
    ["try_table", moduleOf([], [], [0x1f, 0x40, 0, 0x0b, 0x0b])],
    ["a store to memory 1", moduleOf([I32, I32], [], [0x20, 0, 0x20, 1, 0x36, 0x40, 1, 0, 0x0b])],
    ["a body without end", moduleOf([], [], [0x01])],
    ["a body running past its size", moduleOf([], [], [0x41])],
    ["an unknown SIMD opcode", moduleOf([], [], [0xfd, ...leb(0x200), 0x0b])],
  ];
  for (const [what, bytes] of cases) assert.is(errorCode(() => markModuleStores(bytes, options)), ErrorCode.EmulatorChanged, what);
  assert.is(errorCode(() => markModuleStores(moduleOf([], [], [0x0b]), { map: 2 ** 32 - 10, mark: 1 })), ErrorCode.EmulatorChanged, "a map past 4 GiB");
  assert.is(errorCode(() => markModuleStores(moduleOf([], [], [0x0b]), { map: MAP, mark: 0 })), ErrorCode.EmulatorChanged, "a mark of 0");
  const random = seededRandom(18);
  const base = moduleOf([I32, I32], [], [0x20, 0, 0x20, 1, 0x36, 0, 0, 0x20, 0, 0x41, 1, 0x20, 1, 0xfc, 11, 0, 0x0b]);
  for (let run = 0; run < 1000; run++) {
    const bytes = base.slice();
    for (let flips = 1 + Math.floor(random() * 3); flips > 0; flips--) bytes[8 + Math.floor(random() * (bytes.length - 8))] = Math.floor(random() * 256);
    try {
      markModuleStores(bytes.subarray(0, 8 + Math.floor(random() * (bytes.length - 7))), options);
    } catch (error) {
      if (!(error instanceof TandemError) || error.code !== ErrorCode.EmulatorChanged) assert.unreachable(`run ${run}: threw ${String(error)}`);
    }
  }
});

test.run();
