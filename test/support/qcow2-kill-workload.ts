/**
 * The deterministic workload of the kill -9 test (test/qcow2-crash.test.ts), shared by the test
 * and the writer it kills (test/support/qcow2-kill-writer.ts) so both know every operation. Not a test file.
 */

import { seededRandom } from "../../host/prng.ts";

/** One operation: write `data` at `offset`, or discard `data.length` bytes there. */
export interface KillOp {
  kind: "write" | "discard";
  offset: number;
  data: Uint8Array;
}

/** `count` operations on a disk of `size` bytes: mostly small writes at random places, some discards. */
export function killWorkload(seed: number, size: number, count: number): KillOp[] {
  const random = seededRandom(seed);
  const ops: KillOp[] = [];
  for (let i = 0; i < count; i++) {
    const length = 512 * (1 + Math.floor(random() * 24));
    const offset = 512 * Math.floor(random() * ((size - length) / 512));
    const kind = random() < 0.9 ? "write" : "discard";
    ops.push({ kind, offset, data: kind === "write" ? new Uint8Array(length).fill(1 + (i % 255)) : new Uint8Array(length) });
  }
  return ops;
}
