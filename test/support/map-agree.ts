/**
 * Comparing tandem's map with `qemu-img map --output=json`. Both ask the file system for holes
 * where the runtime can (Bun, Deno: SEEK_DATA), and then must agree field for field. Node cannot
 * seek holes, so tandem reads instead and takes any 4 KiB block of a sparse file that reads as
 * zeros for a hole (docs/disks.md, "Map"): there tandem may say `zero` where qemu, which knows the
 * block was written, says data. That is the one difference allowed, and only on such runtimes.
 */

import * as assert from "uvu/assert";
import { holeSeeker } from "../../host/runtime/seek-data.ts";
import type { QemuMapExtent } from "./qemu.ts";

/** Asserts `ours` describes the disk as `theirs` (qemu-img's) does, up to the difference above. */
export function assertMapsAgree(ours: readonly QemuMapExtent[], theirs: readonly QemuMapExtent[], message: string): void {
  if (holeSeeker() !== null) {
    assert.equal(ours, theirs, message);
    return;
  }
  const cuts = [...new Set([...ours, ...theirs].flatMap((e) => [e.start, e.start + e.length]))].sort((a, b) => a - b);
  const at = (map: readonly QemuMapExtent[], pos: number) => map.find((e) => e.start <= pos && pos < e.start + e.length);
  for (let i = 0; i + 1 < cuts.length; i++) {
    const pos = cuts[i];
    const o = at(ours, pos);
    const t = at(theirs, pos);
    const where = `${message}: at ${pos}: ours ${JSON.stringify(o)}, qemu's ${JSON.stringify(t)}`;
    assert.ok(o !== undefined && t !== undefined, where);
    assert.is(o.depth, t.depth, where);
    assert.is(o.present, t.present, where);
    const hostOf = (e: QemuMapExtent) => (e.offset === undefined ? undefined : e.offset + (pos - e.start));
    assert.is(hostOf(o), hostOf(t), where);
    const same = o.zero === t.zero && o.data === t.data;
    const readZerosAsHole = o.zero && !t.zero && t.data;
    assert.ok(same || readZerosAsHole, where);
  }
}
