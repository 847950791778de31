import { openSync, closeSync, ftruncateSync, writeSync } from "node:fs";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { openDisk } from "../../host/disk/registry.ts";
import { NbdServer } from "../../host/nbd/server.ts";
import { runtimeName } from "../../host/runtime/runtime.ts";
import { holeSeeker } from "../../host/runtime/seek-data.ts";
import { mustRun } from "../support/nbd.ts";
import { qemuImg, qemuIo, qemuMap, qemuTest, tempDir } from "../support/qemu.ts";

const test = suite("map with holes: holes in the host file map as zeros, as qemu-img map reports them (img map and NBD block status)");
const dir = tempDir("map-holes");
test.after(() => dir.remove());

const MiB = 1 << 20;

/** What a map says, without the host offsets (NBD clients do not see them). */
type Shape = [number, number, boolean, boolean][];
const shape = (extents: { start?: number; offset?: number; length: number; zero: boolean; data: boolean }[]): Shape =>
  extents.map((e) => [e.start ?? (e.offset as number), e.length, e.zero, e.data]);

/** tandem's map of `path`, directly and through its NBD server as qemu-img map sees it, against qemu-img map of the file. */
async function assertSameMap(path: string, format: string, what: string): Promise<void> {
  const expected = shape(qemuMap(path));
  const disk = openDisk(path, { format, readOnly: true });
  try {
    const ours = disk.map(0, disk.size);
    assert.equal(shape(ours), expected, `${what}: Disk.map`);
    const server = await NbdServer.listen({ disk, exportName: "" }, { host: "127.0.0.1", port: 0 });
    try {
      const overNbd = JSON.parse(await mustRun("qemu-img", ["map", "--output=json", "-f", "raw", server.uri])) as { start: number; length: number; zero: boolean; data: boolean }[];
      assert.equal(shape(overNbd), expected, `${what}: NBD block status`);
    } finally {
      await server.close();
    }
  } finally {
    disk.close();
  }
}

test("the runtime's hole seeking: Bun and Deno have SEEK_DATA through FFI, Node reads", () => {
  assert.is(holeSeeker() !== null, runtimeName() !== "node", runtimeName());
});

test("a sparse raw file: holes map as zero, written blocks as data", async () => {
  if (!qemuTest("sparse raw map")) return;
  const path = dir.path("sparse.raw");
  const fd = openSync(path, "w+");
  ftruncateSync(fd, 8 * MiB);
  writeSync(fd, new Uint8Array(4096).fill(0x5a), 0, 4096, 1 * MiB);
  writeSync(fd, new Uint8Array(3 * 4096).fill(0xa5), 0, 3 * 4096, 5 * MiB + 8192);
  closeSync(fd);
  await assertSameMap(path, "raw", "sparse raw");
});

test("a 2 MiB qcow2 cluster whose host range is a hole maps as zero (and data), as qemu reports it", async () => {
  if (!qemuTest("qcow2 host holes map")) return;
  const path = dir.path("prealloc.qcow2");
  qemuImg("create", "-q", "-f", "qcow2", "-o", "cluster_size=2M,preallocation=metadata", path, "8M");
  qemuIo(path, ["write -P 0x11 2M 4k", "write -P 0x22 6M 8k"]);
  await assertSameMap(path, "qcow2", "preallocated 2 MiB clusters");
});

test.run();
