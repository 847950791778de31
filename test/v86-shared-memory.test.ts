import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { shareModuleMemory } from "../host/emulators/v86/shared-memory.ts";
import { V86Machine } from "../host/emulators/v86/v86-machine.ts";
import { ErrorCode, TandemError } from "../host/errors.ts";
import { seededRandom } from "../host/prng.ts";
import { errorCode } from "./support/errors.ts";
import { until } from "./support/session.ts";

const test = suite("v86 on a shared memory: the module rewrite, the modules its JIT compiles, and a guest the JIT compiles");

const v86Wasm = () => new Uint8Array(readFileSync(fileURLToPath(new URL("v86.wasm", import.meta.resolve("v86")))));
const guestUrl = new URL("./support/jit-guest/", import.meta.url);

/** A module that only imports a memory "e"."m" with a minimum of 1 page, unshared: how v86's JIT declares it. */
const jitLike = () => Uint8Array.of(0x00, 0x61, 0x73, 0x6d, 1, 0, 0, 0, 2, 8, 1, 1, 0x65, 1, 0x6d, 2, 0x00, 1);

test("v86's module: its memory becomes an imported shared env.memory, still exported; every other import and export stays", () => {
  const original = v86Wasm();
  const { bytes, minPages } = shareModuleMemory(original);
  assert.ok(WebAssembly.validate(bytes), "the rewritten module validates");
  const before = new WebAssembly.Module(original);
  const after = new WebAssembly.Module(bytes);
  assert.equal(WebAssembly.Module.imports(after), [...WebAssembly.Module.imports(before), { module: "env", name: "memory", kind: "memory" }]);
  assert.equal(WebAssembly.Module.exports(after), WebAssembly.Module.exports(before));
  assert.ok(minPages >= 1, "the minimum of the memory v86 defined carries over");
});

test("an imported unshared memory, as in the JIT's modules, becomes shared: the module then links to a shared memory, and did not before", () => {
  const shared = new WebAssembly.Memory({ initial: 1, maximum: 65536, shared: true });
  assert.throws(() => new WebAssembly.Instance(new WebAssembly.Module(jitLike()), { e: { m: shared } }), "an unshared declaration refuses a shared memory");
  const { bytes, minPages } = shareModuleMemory(jitLike(), { module: "e", name: "m" });
  assert.is(minPages, 1);
  new WebAssembly.Instance(new WebAssembly.Module(bytes), { e: { m: shared } });
  // v86 writes section sizes as padded LEB128 (two bytes for a small number): read the same.
  const padded = Uint8Array.of(0x00, 0x61, 0x73, 0x6d, 1, 0, 0, 0, 2, 0x88, 0x00, 1, 1, 0x65, 1, 0x6d, 2, 0x00, 1);
  new WebAssembly.Instance(new WebAssembly.Module(shareModuleMemory(padded).bytes), { e: { m: shared } });
});

test("a module that is not what the rewrite expects is refused with E_EMULATOR_CHANGED, and random damage gives nothing else", () => {
  const header = [0x00, 0x61, 0x73, 0x6d, 1, 0, 0, 0];
  const cases: [string, Uint8Array][] = [
    ["empty", new Uint8Array(0)],
    ["no magic", Uint8Array.of(1, 2, 3, 4, 1, 0, 0, 0)],
    ["no memory", Uint8Array.of(...header)],
    ["two memories", Uint8Array.of(...header, 2, 8, 1, 1, 0x65, 1, 0x6d, 2, 0x00, 1, 5, 3, 1, 0x00, 1)],
    ["an unknown import kind", Uint8Array.of(...header, 2, 7, 1, 1, 0x65, 1, 0x6d, 9, 0)],
    ["unknown limits", Uint8Array.of(...header, 2, 8, 1, 1, 0x65, 1, 0x6d, 2, 0x07, 1)],
    ["a section past the end", Uint8Array.of(...header, 2, 40, 1)],
    ["a six-byte LEB128", Uint8Array.of(...header, 2, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00)],
  ];
  for (const [what, bytes] of cases) assert.is(errorCode(() => shareModuleMemory(bytes)), ErrorCode.EmulatorChanged, what);
  const random = seededRandom(77);
  for (let run = 0; run < 500; run++) {
    const bytes = jitLike();
    for (let flips = 1 + Math.floor(random() * 3); flips > 0; flips--) bytes[8 + Math.floor(random() * (bytes.length - 8))] = Math.floor(random() * 256);
    const cut = bytes.subarray(0, 8 + Math.floor(random() * (bytes.length - 7)));
    try {
      shareModuleMemory(cut);
    } catch (error) {
      if (!(error instanceof TandemError) || error.code !== ErrorCode.EmulatorChanged) {
        assert.unreachable(`run ${run}: ${[...cut].join(",")} threw ${String(error)}`);
      }
    }
  }
});

test("a guest the JIT compiles, on a shared memory: its compiled code is rewritten, linked, and writes RAM as the guest means", async () => {
  const machine = await V86Machine.create({ multiboot: new Uint8Array(readFileSync(new URL("jit-guest.bin", guestUrl))), memoryBytes: 8 << 20, disk: null, sharedMemory: true });
  try {
    const ram = machine.memory[0];
    assert.ok(ram.wasmMemory!.buffer instanceof SharedArrayBuffer);
    // A v86 test hook (read only here): called once per module the JIT has compiled and linked.
    const cpu = (machine.emulator as unknown as { v86: { cpu: { test_hook_did_finalize_wasm?: () => void } } }).v86.cpu;
    let linked = 0;
    cpu.test_hook_did_finalize_wasm = () => void linked++;
    let dots = 0;
    machine.emulator.add_listener("serial0-output-byte", (byte: number) => void (byte === 0x2e && dots++));
    machine.resume();
    await until(() => linked >= 1 && dots >= 50, 20_000);
    machine.pause();
    const words = new Uint32Array(ram.bytes().slice(0x400000, 0x400000 + 4096 * 4).buffer);
    const done = new DataView(ram.bytes().buffer, ram.bytes().byteOffset + 0x500000, 4).getUint32(0, true);
    assert.ok(done >= 50, `the guest finished ${done} passes`);
    assert.ok(dots === done || dots === done - 1, `${dots} dots for ${done} finished passes`);
    let i = 0;
    while (i < words.length && words[i] === done + 1) i++;
    while (i < words.length && words[i] === done) i++;
    assert.is(i, words.length, `the pass area holds pass ${done + 1} then pass ${done}, and nothing else (word ${i} is ${words[i]})`);
  } finally {
    await machine.destroy();
  }
});

test("the committed JIT guest image is what nasm makes of its source", () => {
  if (spawnSync("nasm", ["-v"]).status !== 0) {
    console.log("  (skipped: nasm not installed; the committed jit-guest.bin was checked where it is)");
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), "tandem-jit-guest-"));
  try {
    const out = join(dir, "jit-guest.bin");
    const built = spawnSync("nasm", ["-f", "bin", fileURLToPath(new URL("jit-guest.asm", guestUrl)), "-o", out], { encoding: "utf8" });
    assert.is(built.status, 0, built.stderr);
    assert.equal([...readFileSync(out)], [...readFileSync(new URL("jit-guest.bin", guestUrl))]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
