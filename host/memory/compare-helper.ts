/**
 * A helper thread that runs `pages_compare_copy` on part of a shared WebAssembly.Memory while
 * the main thread compares the rest. The compare is bounded by memory bandwidth and the guest is
 * paused during it, so a second core halves the pause (see DetectingDirtyLog).
 *
 * The caller stays synchronous: it posts a job ({@link CompareHelper.start}), does its own part,
 * then blocks in Atomics.wait for the helper's answer ({@link CompareHelper.finish}). There is no
 * message passing: the job and its answer go through a small control block of shared words.
 *
 * One helper per memory and flavor, made on first use and shared by every log over that memory.
 * The worker is unref'd so it never keeps a process alive; {@link closeCompareHelper} ends it.
 */

import { Worker } from "node:worker_threads";
import { ErrorCode, TandemError } from "../errors.ts";
import { isSharedMemory, kernelBytes, type WasmFlavor } from "../wasm/loader.ts";
import { PAGE_SIZE } from "./guest-memory.ts";

/**
 * The control block, an Int32Array over a SharedArrayBuffer, by word index. The caller writes
 * the arguments, then bumps SEQ; the worker runs the job, writes RESULT and STATUS, then sets
 * DONE to that SEQ. Atomics.store/load on SEQ and DONE order the plain words around them.
 */
const SEQ = 0; // number of the last job posted (jobs count from 1; the worker starts at 0)
const DONE = 1; // number of the last job answered
const STOP = 2; // nonzero: the worker returns instead of running the next job
const RAM = 3; // pages_compare_copy arguments: byte offsets (as i32 bits) and a page count
const SHADOW = 4;
const PAGES = 5;
const OUT = 6;
const RESULT = 7; // the count of changed pages
const STATUS = 8; // see below
const FAULT = 9; // test hook: see CompareHelper.injectFault
const CONTROL_WORDS = 10;

/** STATUS values: the job ran; the kernel trapped; the kernels could not be instantiated. */
const STATUS_OK = 0;
const STATUS_TRAP = 1;
const STATUS_NO_KERNELS = 2;

/** FAULT values (0: none): answer with STATUS_TRAP without running; never answer. */
const FAULT_ERROR = 1;
const FAULT_SILENT = 2;

/** Pages the worker compares per kernel call (4 MiB, well under a millisecond), checking STOP between calls. */
const CHUNK_PAGES = 1024;

/**
 * How long a caller waits for an answer. A half of a 4 GiB guest compares in well under a
 * second, so a helper this late is stuck or gone, not slow.
 */
const DEFAULT_TIMEOUT_MS = 10_000;

// CommonJS, evaluated in the worker: no file to resolve, so it runs the same from the .ts
// sources and from dist/ on Node, Deno and Bun. The word indices are spliced in below.
const WORKER_CODE = `"use strict";
const { workerData } = require("node:worker_threads");
const { memory, control, bytes } = workerData;
const c = new Int32Array(control);
let kernels;
try {
  kernels = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { memory } }).exports;
} catch {
  kernels = undefined;
}
let seen = 0;
for (;;) {
  while (Atomics.load(c, ${SEQ}) === seen && Atomics.load(c, ${STOP}) === 0) Atomics.wait(c, ${SEQ}, seen);
  if (Atomics.load(c, ${STOP}) !== 0) break;
  seen = Atomics.load(c, ${SEQ});
  const fault = c[${FAULT}];
  if (fault === ${FAULT_SILENT}) continue;
  if (kernels === undefined) {
    c[${STATUS}] = ${STATUS_NO_KERNELS};
  } else if (fault === ${FAULT_ERROR}) {
    c[${STATUS}] = ${STATUS_TRAP};
  } else {
    try {
      // In chunks, checking STOP between them: a helper the caller gave up on stops writing the
      // shadow within one chunk, instead of finishing its half behind the caller's back.
      const ram = c[${RAM}] >>> 0, shadow = c[${SHADOW}] >>> 0, pages = c[${PAGES}] >>> 0, out = c[${OUT}] >>> 0;
      const list = new Uint32Array(memory.buffer, out, pages);
      let found = 0;
      for (let first = 0; first < pages && Atomics.load(c, ${STOP}) === 0; first += ${CHUNK_PAGES}) {
        const n = Math.min(${CHUNK_PAGES}, pages - first);
        const k = kernels.pages_compare_copy(ram + first * ${PAGE_SIZE}, shadow + first * ${PAGE_SIZE}, n, out + found * 4);
        for (let i = found; i < found + k; i++) list[i] += first;
        found += k;
      }
      c[${RESULT}] = found;
      c[${STATUS}] = ${STATUS_OK};
    } catch {
      c[${STATUS}] = ${STATUS_TRAP};
    }
  }
  Atomics.store(c, ${DONE}, seen);
  Atomics.notify(c, ${DONE});
}
`;

/** A helper thread comparing pages of one shared memory. */
export class CompareHelper {
  /** The Wasm flavor the worker runs. */
  readonly flavor: WasmFlavor;
  readonly #worker: Worker;
  readonly #control: Int32Array<SharedArrayBuffer>;
  #seq = 0;
  #busy = false;
  #dead = false;
  #timeoutMs = DEFAULT_TIMEOUT_MS;

  /** Use {@link compareHelper}: it makes one per memory and flavor. */
  constructor(memory: WebAssembly.Memory, flavor: WasmFlavor) {
    if (!isSharedMemory(memory)) {
      throw new TandemError(ErrorCode.BadArgument, "a compare helper needs a shared WebAssembly.Memory ({ shared: true, maximum })");
    }
    this.flavor = flavor;
    this.#control = new Int32Array(new SharedArrayBuffer(CONTROL_WORDS * 4));
    this.#worker = new Worker(WORKER_CODE, {
      eval: true,
      workerData: { memory, control: this.#control.buffer, bytes: kernelBytes(flavor, true) },
    });
    this.#worker.unref();
    // Seen between collects only (the main thread is busy during one); a job the worker
    // dies in is caught by the timeout instead.
    this.#worker.on("exit", () => this.#kill());
    this.#worker.on("error", () => this.#kill());
  }

  /** False once the worker has exited, failed a job or been closed; a dead helper takes no job. */
  get alive(): boolean {
    return !this.#dead;
  }

  /**
   * Posts `pages_compare_copy(ram, shadow, pages, out)` (byte offsets into the memory) and
   * returns at once; {@link finish} waits for it. One job at a time.
   */
  start(ram: number, shadow: number, pages: number, out: number): void {
    if (this.#dead) throw new TandemError(ErrorCode.InvalidState, "the compare helper is closed or failed; check alive before posting a job");
    if (this.#busy) throw new TandemError(ErrorCode.InvalidState, "a compare job is already posted; call finish() first");
    const c = this.#control;
    c[RAM] = ram;
    c[SHADOW] = shadow;
    c[PAGES] = pages;
    c[OUT] = out;
    this.#seq = (this.#seq + 1) | 0;
    this.#busy = true;
    Atomics.store(c, SEQ, this.#seq);
    Atomics.notify(c, SEQ);
  }

  /**
   * Waits for the posted job and returns its count of changed pages. If the worker does not
   * answer in time or reports a failure, the helper is closed and this throws E_FAILED: the
   * job's pages may be half compared (and half copied into the shadow), so the caller must
   * not trust them nor redo them while the worker might still run.
   */
  finish(): number {
    if (!this.#busy) throw new TandemError(ErrorCode.InvalidState, "no compare job is posted; call start() first");
    this.#busy = false;
    const c = this.#control;
    const deadline = performance.now() + this.#timeoutMs;
    for (let done = Atomics.load(c, DONE); done !== this.#seq; done = Atomics.load(c, DONE)) {
      const left = deadline - performance.now();
      if (left <= 0) {
        this.#kill();
        throw new TandemError(ErrorCode.Failed, `the compare helper thread did not answer within ${this.#timeoutMs} ms; it was stopped, and the next collect copies every page`);
      }
      Atomics.wait(c, DONE, done, left);
    }
    const status = c[STATUS];
    if (status !== STATUS_OK) {
      this.#kill();
      const why = status === STATUS_NO_KERNELS ? "could not instantiate the kernels over the shared memory" : "trapped in pages_compare_copy";
      throw new TandemError(ErrorCode.Failed, `the compare helper thread ${why}; it was stopped, and the next collect copies every page`);
    }
    return c[RESULT] >>> 0;
  }

  /** Ends the worker (idempotent). A job still posted is abandoned: see {@link finish}. */
  close(): void {
    this.#kill();
  }

  /**
   * Test hook: makes the next jobs fail. "error" answers each with a failure at once, "silent"
   * never answers (so {@link finish} times out after `timeoutMs`).
   */
  injectFault(fault: "error" | "silent", timeoutMs = DEFAULT_TIMEOUT_MS): void {
    this.#control[FAULT] = fault === "error" ? FAULT_ERROR : FAULT_SILENT;
    this.#timeoutMs = timeoutMs;
  }

  #kill(): void {
    if (this.#dead) return;
    this.#dead = true;
    // The flag ends a worker waiting for a job; terminate() one stuck inside a kernel.
    Atomics.store(this.#control, STOP, 1);
    Atomics.notify(this.#control, SEQ);
    void this.#worker.terminate();
  }
}

const helpers = new WeakMap<WebAssembly.Memory, Map<WasmFlavor, CompareHelper>>();

/**
 * The helper of `memory` (which must be shared) running `flavor`, made on first call. A helper
 * that died stays returned, dead, until {@link closeCompareHelper}: a thread that failed once
 * is not restarted behind the caller's back.
 */
export function compareHelper(memory: WebAssembly.Memory, flavor: WasmFlavor): CompareHelper {
  let byFlavor = helpers.get(memory);
  if (!byFlavor) helpers.set(memory, (byFlavor = new Map()));
  let helper = byFlavor.get(flavor);
  if (!helper) byFlavor.set(flavor, (helper = new CompareHelper(memory, flavor)));
  return helper;
}

/**
 * Ends the helper threads of `memory`, if any (idempotent). Call it when the machine that owns
 * the memory is destroyed; a later collect over the memory starts a new helper.
 */
export function closeCompareHelper(memory: WebAssembly.Memory): void {
  const byFlavor = helpers.get(memory);
  if (!byFlavor) return;
  helpers.delete(memory);
  for (const helper of byFlavor.values()) helper.close();
}
