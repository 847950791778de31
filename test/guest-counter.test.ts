import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { V86, type V86Options } from "v86";

const test = suite("built-in guest (guest/counter): boots in v86, counts, dirties RAM, stamps the disk");

// v86 in ESM cannot find its own wasm (it falls back to __dirname): resolve it next to the module.
const WASM = fileURLToPath(new URL("v86.wasm", import.meta.resolve("v86")));
const IMAGE = new Uint8Array(readFileSync(new URL("../guest/counter/counter.bin", import.meta.url)));
const MEMORY = 32 << 20;
const PAGE = 4096;
const SECTOR = 512;
const BOOT_TIMEOUT_MS = 15_000;

// Where the guest starts dirtying RAM: the first page after its bss (multiboot bss_end_addr, at
// byte 24 of the header, which is the first thing in the image).
const header = new DataView(IMAGE.buffer, IMAGE.byteOffset, 32);
const KERNEL = header.getUint32(16, true);
const WALK_BASE = Math.ceil(header.getUint32(24, true) / PAGE) * PAGE;

interface Run {
  emulator: V86;
  /** Complete lines so far, without "\n", with the wall-clock time each one ended. */
  lines: string[];
  times: number[];
}

async function boot(cmdline: string | undefined, disk: ArrayBuffer | undefined): Promise<Run> {
  const options: V86Options = {
    wasm_path: WASM,
    multiboot: { buffer: IMAGE.slice().buffer },
    memory_size: MEMORY,
    vga_memory_size: 2 << 20,
    autostart: true,
    disable_speaker: true,
  };
  if (cmdline !== undefined) options.cmdline = cmdline;
  if (disk) options.hda = { buffer: disk };
  const emulator = new V86(options);
  const run: Run = { emulator, lines: [], times: [] };
  let line = "";
  emulator.add_listener("serial0-output-byte", (byte: number) => {
    if (byte !== 10) {
      line += String.fromCharCode(byte);
      return;
    }
    run.lines.push(line);
    run.times.push(performance.now());
    line = "";
  });
  return run;
}

/** Waits (bounded) until the guest has printed `line`. */
async function waitForLine(run: Run, line: string): Promise<void> {
  const deadline = performance.now() + BOOT_TIMEOUT_MS;
  while (!run.lines.includes(line)) {
    if (performance.now() > deadline) {
      throw new Error(`no "${line}" within ${BOOT_TIMEOUT_MS} ms; the guest said:\n${run.lines.join("\n")}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Checks the preamble and that what follows is exactly `counter 1`..`counter N`; returns N. */
function checkCounters(run: Run, preamble: string[]): number {
  assert.equal(run.lines.slice(0, preamble.length), preamble, "the banner, then nothing else before counter 1");
  const rest = run.lines.slice(preamble.length);
  rest.forEach((l, i) => assert.is(l, `counter ${i + 1}`, "counter lines consecutive from 1, no gap, no repeat, no disk errors"));
  return rest.length;
}

/** Ticks per second between `counter 1` and `counter n` by the host's clock. */
function rate(run: Run, n: number): number {
  const first = run.times[run.lines.indexOf("counter 1")];
  const last = run.times[run.lines.indexOf(`counter ${n}`)];
  return ((n - 1) * 1000) / (last - first);
}

function assertRate(measured: number, hz: number): void {
  // Generous: the machine is shared and noisy. v86 never fires the PIT early, it can only lag.
  assert.ok(measured > hz * 0.4 && measured < hz * 1.5, `about ${hz} ticks/s, measured ${measured.toFixed(1)}`);
}

/** The first u32 of page `index` of the dirty walk. */
function walkPage(emulator: V86, index: number): number {
  const view = emulator.read_memory(WALK_BASE + index * PAGE, 4);
  return view[0] | (view[1] << 8) | (view[2] << 16) | (view[3] * 2 ** 24);
}

function assertKernelIntact(emulator: V86): void {
  const loaded = emulator.read_memory(KERNEL, IMAGE.length);
  assert.ok(loaded.every((b, i) => b === IMAGE[i]), "the kernel image in RAM is untouched");
}

function stamp(counter: number): Uint8Array {
  const sector = new Uint8Array(SECTOR);
  const view = new DataView(sector.buffer);
  for (let o = 0; o < SECTOR; o += 8) {
    sector.set([0x54, 0x4e, 0x44, 0x4d], o); // "TNDM"
    view.setUint32(o + 4, counter, true);
  }
  return sector;
}

test("defaults (no command line): banner, counter 1..N at ~20 Hz, 16 pages dirtied per tick, a stamp per tick on hda", async () => {
  const disk = new ArrayBuffer(1 << 20);
  const run = await boot(undefined, disk);
  const { emulator } = run;
  try {
    await waitForLine(run, "counter 20");
    await emulator.stop();
    const n = checkCounters(run, ["tandem guest: hz=20 dirty=16 disk=1"]);
    assert.ok(n >= 20);
    assertRate(rate(run, 20), 20);

    // Tick t (1-based) wrote t into walk pages 16(t-1) .. 16t-1. The tick after the last line
    // may be half done (the emulator stopped mid-tick), so only pages past it must be clean.
    for (let page = 0; page < n * 16; page++) assert.is(walkPage(emulator, page), Math.floor(page / 16) + 1, `walk page ${page}`);
    for (let page = (n + 1) * 16; page < (n + 1) * 16 + 64; page++) assert.is(walkPage(emulator, page), 0, `walk page ${page} untouched`);
    assertKernelIntact(emulator);

    const bytes = new Uint8Array(disk);
    assert.ok(bytes.subarray(0, SECTOR).every((b) => b === 0), "LBA 0 not written before counter 256");
    for (let t = 1; t <= n; t++) {
      assert.equal(bytes.subarray(t * SECTOR, (t + 1) * SECTOR), stamp(t), `LBA ${t} holds stamp ${t}`);
    }
    assert.ok(bytes.subarray((n + 2) * SECTOR).every((b) => b === 0), "nothing written past the last tick");
  } finally {
    await emulator.destroy();
  }
});

test("cmdline `disk=0 dirty=0 hz=100`: ~100 Hz, hda present but untouched, no RAM dirtied", async () => {
  const disk = new ArrayBuffer(1 << 20);
  const run = await boot("counter disk=0 dirty=0 hz=100", disk);
  const { emulator } = run;
  try {
    await waitForLine(run, "counter 100");
    await emulator.stop();
    checkCounters(run, ["tandem guest: hz=100 dirty=0 disk=0"]);
    assertRate(rate(run, 100), 100);
    assert.ok(new Uint8Array(disk).every((b) => b === 0), "the guest did not touch the disk");
    for (let page = 0; page < 64; page++) assert.is(walkPage(emulator, page), 0, `walk page ${page}`);
    assertKernelIntact(emulator);
  } finally {
    await emulator.destroy();
  }
});

test("a stamp corrupted behind the guest's back is caught by its read-back and counted once", async () => {
  const disk = new ArrayBuffer(1 << 20);
  const run = await boot(undefined, disk);
  const { emulator } = run;
  try {
    await waitForLine(run, "counter 5");
    await emulator.stop();
    // The emulator may have stopped inside tick c+1, before or after it read back LBA c, so
    // spoil every sector written so far: whichever tick reads first finds one bad stamp.
    const c = run.lines.length - 1;
    new Uint8Array(disk).fill(0xee, SECTOR, (c + 2) * SECTOR);
    await emulator.run();
    await waitForLine(run, `counter ${c + 5}`);
    const after = run.lines.slice(c + 1);
    const firstError = after.indexOf("disk errors 1");
    assert.ok(firstError === 1 || firstError === 3, `error reported after counter ${c + 1} or ${c + 2}: ${after.join(" | ")}`);
    const errorFrom = firstError === 1 ? c + 1 : c + 2;
    const expected: string[] = [];
    for (let t = c + 1; t <= c + 5; t++) {
      expected.push(`counter ${t}`);
      if (t >= errorFrom) expected.push("disk errors 1");
    }
    assert.equal(after.slice(0, expected.length), expected, "one error, repeated after each later counter line");
  } finally {
    await emulator.destroy();
  }
});

test("no hda: says so once and keeps counting; out-of-range values are clamped", async () => {
  const run = await boot("hz=5000 dirty=99999999 bogus=1", undefined);
  const { emulator } = run;
  try {
    await waitForLine(run, "counter 10");
    await emulator.stop();
    // dirty is clamped to the pages between the kernel and the top of RAM.
    const pages = (MEMORY - WALK_BASE) / PAGE;
    checkCounters(run, [`tandem guest: hz=1000 dirty=${pages} disk=1`, "tandem guest: no disk"]);
    assertKernelIntact(emulator);
  } finally {
    await emulator.destroy();
  }
});

test.run();
