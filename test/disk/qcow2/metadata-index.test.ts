import { suite } from "uvu";
import * as assert from "uvu/assert";
import { Metadata, MetadataIndex } from "../../../host/disk/qcow2/metadata-index.ts";
import { ErrorCode } from "../../../host/errors.ts";
import { seededRandom } from "../../../host/prng.ts";
import { failure } from "../../support/errors.ts";

const test = suite("qcow2 metadata index: the filter in front of the overlap check never hides metadata");

const CS = 512;
/** The filter's width (metadata-index.ts): clusters this far apart share a bit. */
const FILTER_BITS = 1 << 20;

/** The index's contents as plain lists, checked cluster by cluster: what the index must answer. */
class Model {
  ranges = new Map<number, Array<[number, number]>>();
  clusters = new Map<number, number>();
  kindsIn(first: number, last: number): number {
    let kinds = 0;
    for (const [kind, list] of this.ranges) for (const [a, b] of list) if (a <= last && b > first) kinds |= kind;
    for (const [cluster, kind] of this.clusters) if (cluster >= first && cluster <= last) kinds |= kind;
    return kinds;
  }
}

/** Checks `index` against `model` at `probes` clusters and at multi-cluster spans around them. */
function agree(index: MetadataIndex, model: Model, probes: number[]): void {
  for (const cluster of probes) {
    assert.is(index.kindsAt(cluster), model.kindsIn(cluster, cluster), `cluster ${cluster}`);
    for (const allowed of [0, Metadata.ActiveL2]) {
      assert.is(index.overlap(cluster * CS + 7, 1, allowed), model.kindsIn(cluster, cluster) & ~allowed, `1 byte in cluster ${cluster}`);
      if (cluster >= 2) assert.is(index.overlap((cluster - 2) * CS + 1, 4 * CS, allowed), model.kindsIn(cluster - 2, cluster + 2) & ~allowed, `span around cluster ${cluster}`);
    }
  }
}

test("random structures, near and far past the filter's width (clusters sharing bits), agree with a plain model", () => {
  const random = seededRandom(0x3e7a);
  const index = new MetadataIndex(CS);
  const model = new Model();
  model.ranges.set(Metadata.Header, [[0, 1]]);
  const metadata: number[] = [];
  for (let i = 0; i < 300; i++) {
    // Clusters below the width, past it (sharing bits with the low ones) and far past 2^32.
    const base = [0, FILTER_BITS, 3 * FILTER_BITS, 2 ** 40][i % 4];
    const cluster = base + 2 + Math.floor(random() * 5000);
    const kind = random() < 0.5 ? Metadata.ActiveL2 : Metadata.RefcountBlock;
    index.addCluster(cluster, kind);
    model.clusters.set(cluster, (model.clusters.get(cluster) ?? 0) | kind);
    metadata.push(cluster);
  }
  index.setRange(Metadata.ActiveL1, 6000 * CS, 3 * CS);
  model.ranges.set(Metadata.ActiveL1, [[6000, 6003]]);
  index.setRange(Metadata.RefcountTable, 7000 * CS, 2 * CS);
  model.ranges.set(Metadata.RefcountTable, [[7000, 7002]]);
  const probes = [...metadata, 0, 1, 5999, 6000, 6002, 6003, 7001, FILTER_BITS + 6001, FILTER_BITS + 6003];
  for (let i = 0; i < 2000; i++) probes.push(Math.floor(random() * 8000) + [0, FILTER_BITS, 2 ** 40][i % 3]);
  agree(index, model, probes);

  // The refcount table moves (it grew): its old clusters hold no metadata any more, the new ones do.
  index.setRange(Metadata.RefcountTable, 9000 * CS, 4 * CS);
  model.ranges.set(Metadata.RefcountTable, [[9000, 9004]]);
  agree(index, model, [...probes, 9000, 9003, 9004, 7000, 7001]);
  assert.is(index.kindsAt(7000), 0, "the old refcount table's cluster is free after the move");
});

test("a hostile image naming more metadata than the filter holds: every check takes the exact path, still right", () => {
  const index = new MetadataIndex(CS);
  const model = new Model();
  model.ranges.set(Metadata.Header, [[0, 1]]);
  // One snapshot L1 range longer than the filter, then a few clusters: the filter is all ones.
  index.addRange(Metadata.InactiveL1, 10 * CS, (FILTER_BITS + 5) * CS);
  model.ranges.set(Metadata.InactiveL1, [[10, FILTER_BITS + 15]]);
  index.addCluster(5, Metadata.ActiveL2);
  model.clusters.set(5, Metadata.ActiveL2);
  agree(index, model, [1, 4, 5, 6, 9, 10, FILTER_BITS + 14, FILTER_BITS + 15, FILTER_BITS + 20, 2 ** 40]);
});

test("guard refuses a write onto metadata with E_DISK_CORRUPT and lets its own kind through", () => {
  const index = new MetadataIndex(CS);
  index.addCluster(40, Metadata.RefcountBlock);
  index.guard(41 * CS, CS, 0);
  index.guard(40 * CS, CS, Metadata.RefcountBlock);
  const error = failure(() => index.guard(39 * CS + 100, CS, 0));
  assert.is(error.code, ErrorCode.DiskCorrupt);
  assert.match(error.message, /refcount block/);
});

test.run();
