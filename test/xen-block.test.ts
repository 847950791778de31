import { suite } from "uvu";
import * as assert from "uvu/assert";
import type { Disk } from "../host/disk/disk.ts";
import { createImage, openDisk } from "../host/disk/registry.ts";
import { seededRandom } from "../host/prng.ts";
import { EventChannels } from "../host/xen/event-channel.ts";
import { GrantTable } from "../host/xen/grants/grant-table.ts";
import {
  BlkifOp, BlkifStatus, RING_PAGE_SIZE, SRING_HEADER_SIZE, SRING_REQ_EVENT, SRING_REQ_PROD, SRING_RSP_EVENT, SRING_RSP_PROD,
  type BlkifProtocol,
} from "../host/xen/blkif/ring-layout.ts";
import { XenBlockFrontend, type XenBlockFrontendOptions } from "../host/xen/block/frontend.ts";
import { XenBlockDevice, type XenBlockDeviceOptions } from "../host/xen/block/xen-block-device.ts";
import { backendPath, frontendPath } from "../host/xen/xenbus/paths.ts";
import { XenbusState } from "../host/xen/xenbus/states.ts";
import { createDevice } from "../host/xen/xenbus/toolstack.ts";
import { readOptional } from "../host/xen/xenbus/xenbus-store.ts";
import { XenStore, type XenStoreConnection } from "../host/xen/xenstore/store.ts";
import { tempDir } from "./support/qemu.ts";
import { until } from "./support/session.ts";

const test = suite("xen-block: the device's keys, handshake, I/O of every operation on both ABIs, hostile frontends, unplug");
const BACKEND = 0;
const GUEST = 7;
const DEVID = 51712;
const ID = { type: "vbd", backendDomid: BACKEND, frontendDomid: GUEST, devid: DEVID };
const BACK = backendPath(ID);
const FRONT = frontendPath(ID);
const SECTOR = 512;
const FRAMES = 288;
const DISK_BYTES = 1 << 20;
const ERROR_NODE = `/local/domain/${BACKEND}/error/backend/vbd/${GUEST}/${DEVID}/error`;
const { Ok, Error: Err, EOpNotSupp } = { Ok: BlkifStatus.Okay, Error: BlkifStatus.Error, EOpNotSupp: BlkifStatus.EOpNotSupp };

const temp = tempDir("tandem-xen-block-");
let imageCount = 0;

/** A fresh raw or qcow2 image of DISK_BYTES, opened. */
function image(format: "raw" | "qcow2", size = DISK_BYTES): Disk {
  const path = temp.path(`disk-${imageCount++}.${format}`);
  createImage(path, format, { size });
  return openDisk(path);
}

interface World {
  store: XenStore;
  dom0: XenStoreConnection;
  memory: Uint8Array;
  grants: GrantTable;
  channels: EventChannels;
  device: XenBlockDevice;
  frontend: XenBlockFrontend;
  errors: unknown[];
  removed: () => boolean;
}

type WorldOptions = Partial<Pick<XenBlockDeviceOptions, "readOnly" | "maxRingPageOrder" | "deviceType" | "maxBatch" | "maxIndirectSegments" | "kernels">> &
  Partial<Pick<XenBlockFrontendOptions, "protocol" | "omitProtocol" | "ringPageOrder" | "startIndex" | "tamperKeys">> & { connect?: boolean };

/** The toolstack's directories, a realized device and a started frontend, connected unless told otherwise. */
async function world(disk: Disk, options: WorldOptions = {}): Promise<World> {
  const store = new XenStore();
  const dom0 = store.connect(BACKEND);
  dom0.mkdir(`/local/domain/${GUEST}`);
  dom0.setPerms(`/local/domain/${GUEST}`, [{ domid: GUEST, access: "n" }]);
  createDevice(dom0, ID);
  const memory = new Uint8Array(FRAMES * RING_PAGE_SIZE);
  const grants = new GrantTable({ domid: GUEST, memory });
  const channels = new EventChannels();
  const errors: unknown[] = [];
  const onError = (error: unknown) => errors.push(error);
  let removed = false;
  const device = new XenBlockDevice({
    store: dom0, frontendDomid: GUEST, devid: DEVID, disk, grants, channels, onError, onRemoved: () => (removed = true),
    readOnly: options.readOnly, maxRingPageOrder: options.maxRingPageOrder, deviceType: options.deviceType, maxBatch: options.maxBatch,
    maxIndirectSegments: options.maxIndirectSegments, kernels: options.kernels,
  });
  await device.realize();
  const frontend = new XenBlockFrontend({
    store: store.connect(GUEST), devid: DEVID, grants, memory, channels, frames: { first: 0, count: FRAMES }, onError,
    protocol: options.protocol, omitProtocol: options.omitProtocol, ringPageOrder: options.ringPageOrder, startIndex: options.startIndex,
    tamperKeys: options.tamperKeys,
  });
  frontend.start();
  if (options.connect ?? true) {
    await frontend.connected();
    await device.backend.reached(XenbusState.Connected);
  }
  return { store, dom0, memory, grants, channels, device, frontend, errors, removed: () => removed };
}

function stop(w: World): void {
  w.device.destroy();
  w.frontend.xenbus.stop();
}

function pattern(bytes: number, seed: number): Uint8Array {
  const random = seededRandom(seed);
  return Uint8Array.from({ length: bytes }, () => Math.floor(random() * 256));
}

/** Lets queued events and the handlers they run finish. */
function settle(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

test("realize publishes the seed's keys; a CD-ROM is read-only and offers no discard", async () => {
  const w = await world(image("raw"));
  const keys = Object.fromEntries(w.dom0.directory(BACK).map((k) => [k, w.dom0.readString(`${BACK}/${k}`)]));
  assert.equal(
    { ...keys, frontend: undefined },
    {
      frontend: undefined, "frontend-id": String(GUEST), online: "1", state: "4", "feature-flush-cache": "1", "feature-barrier": "1",
      "feature-discard": "1", "discard-granularity": "512", "discard-alignment": "0", "max-ring-page-order": "4",
      "feature-max-indirect-segments": "256", info: "0", "sector-size": "512", sectors: String(DISK_BYTES / SECTOR), mode: "w",
    },
  );
  assert.is(w.dom0.readString(`${FRONT}/virtual-device`), String(DEVID));
  assert.is(w.dom0.readString(`${FRONT}/device-type`), "disk");
  assert.equal(w.frontend.properties, { sectors: 2048, sectorSize: 512, info: 0, flush: true, barrier: true, discard: true, maxIndirectSegments: 256 });
  stop(w);

  const cd = await world(image("raw"), { deviceType: "cdrom", maxRingPageOrder: 2 });
  assert.is(cd.dom0.readString(`${BACK}/info`), "5", "VDISK_CDROM | VDISK_READONLY");
  assert.is(cd.dom0.readString(`${BACK}/mode`), "r");
  assert.is(cd.dom0.readString(`${BACK}/max-ring-page-order`), "2");
  assert.is(readOptional(cd.dom0, `${BACK}/feature-discard`), undefined);
  assert.is(cd.dom0.readString(`${FRONT}/device-type`), "cdrom");
  assert.is((await cd.frontend.write(0n, new Uint8Array(SECTOR))).status, Err, "a CD-ROM refuses writes");
  assert.is((await cd.frontend.flush()).status, Err, "and flushes, as Linux and QEMU do");
  assert.is((await cd.frontend.read(0n, 1)).status, Ok);
  assert.equal(cd.errors, []);
  stop(cd);
});

test("handshake with rings of 1 to 16 pages on both ABIs (and no protocol key = native): keys, slots, a write read back", async () => {
  const cases: { order: number; protocol: BlkifProtocol | undefined; max?: number }[] = [];
  for (const order of [0, 1, 2, 3, 4]) for (const protocol of ["x86_32-abi", "x86_64-abi"] as const) cases.push({ order, protocol });
  cases.push({ order: 2, protocol: undefined }, { order: 4, protocol: "x86_32-abi", max: 1 });
  for (const { order, protocol, max } of cases) {
    const w = await world(image("raw"), { ringPageOrder: order, protocol: protocol ?? "x86_64-abi", omitProtocol: protocol === undefined, maxRingPageOrder: max });
    const used = Math.min(order, max ?? 4);
    const label = `order ${order} ${protocol}`;
    const front = w.dom0.directory(FRONT);
    if (used === 0) {
      assert.ok(front.includes("ring-ref") && !front.includes("ring-page-order"), label);
    } else {
      assert.is(w.dom0.readString(`${FRONT}/ring-page-order`), String(used), label);
      for (let i = 0; i < 1 << used; i++) assert.ok(front.includes(`ring-ref${i}`), `${label} ring-ref${i}`);
    }
    assert.is(w.frontend.entries, 32 << used, label);
    assert.is(readOptional(w.dom0, `${FRONT}/protocol`), protocol, label);
    const data = pattern(3 * RING_PAGE_SIZE, order);
    assert.is((await w.frontend.write(100n, data)).status, Ok, label);
    const back = await w.frontend.read(100n, data.length / SECTOR);
    assert.is(back.status, Ok, label);
    assert.equal(back.data, data, label);
    assert.equal(w.device.dataplane.connected, true);
    assert.equal(w.errors, [], label);
    stop(w);
  }
});

/** A random workload of every operation, mirrored on a model; reads and the final disk are checked against it. */
async function workload(w: World, disk: Disk, seed: number, rounds: number): Promise<void> {
  const model = new Uint8Array(disk.size);
  const random = seededRandom(seed);
  const sectors = disk.size / SECTOR;
  const pick = (max: number) => Math.floor(random() * max);
  const f = w.frontend;
  for (let round = 0; round < rounds; round++) {
    // Several requests in flight at once, so passes batch them.
    const jobs: Promise<void>[] = [];
    for (let j = 0; j < 6; j++) {
      const kind = pick(8);
      const count = kind >= 6 ? 1 + pick(200) : 1 + pick(88);
      const start = pick(sectors - count);
      const at = start * SECTOR;
      if (kind === 0 || kind === 6) {
        const expect = model.slice(at, at + count * SECTOR);
        jobs.push((kind === 6 ? f.readIndirect(BigInt(start), count) : f.read(BigInt(start), count)).then((r) => {
          assert.is(r.status, Ok);
          // Writes of the same round may overlap; only compare reads issued first in their round.
          if (j === 0) assert.equal(r.data, expect, `round ${round} read ${start}+${count}`);
        }));
      } else if (kind === 1 || kind === 7 || kind === 2) {
        const data = pattern(count * SECTOR, seed * 1000 + round * 10 + j);
        model.set(data, at);
        const done = kind === 7 ? f.writeIndirect(BigInt(start), data) : kind === 2 ? f.barrier(BigInt(start), data) : f.write(BigInt(start), data);
        jobs.push(done.then((r) => assert.is(r.status, Ok)));
      } else if (kind === 3) {
        jobs.push(f.flush().then((r) => assert.is(r.status, Ok)));
      } else if (kind === 4) {
        model.fill(0, at, at + count * SECTOR);
        jobs.push(f.discard(BigInt(start), BigInt(count)).then((r) => assert.is(r.status, Ok)));
      } else {
        jobs.push(f.barrier().then((r) => assert.is(r.status, Ok)));
      }
    }
    await Promise.all(jobs);
  }
  assert.ok(disk.read(0, disk.size).every((byte, i) => byte === model[i]), "the disk equals the model");
  const whole = await f.readIndirect(0n, 256 * 8);
  assert.equal(whole.data, model.subarray(0, 256 * RING_PAGE_SIZE), "and reads back as the model through the ring");
}

test("every operation on both ABIs and several ring sizes, raw and qcow2, against a model of the disk", async () => {
  let seed = 1;
  for (const format of ["raw", "qcow2"] as const) {
    for (const protocol of ["x86_32-abi", "x86_64-abi"] as const) {
      for (const order of [0, 2, 4]) {
        const disk = image(format);
        const w = await world(disk, { protocol, ringPageOrder: order, maxBatch: order === 0 ? 4 : 32 });
        await workload(w, disk, seed++, 6);
        assert.equal(w.errors, [], `${format} ${protocol} order ${order}`);
        stop(w);
        disk.close();
      }
    }
  }
  // The same through the parser's other kernels: the Wasm scalar one and the TypeScript twin.
  for (const kernels of ["scalar", "ts"] as const) {
    const disk = image("raw");
    const w = await world(disk, { kernels, ringPageOrder: 1 });
    await workload(w, disk, seed++, 4);
    assert.equal(w.errors, [], kernels);
    stop(w);
    disk.close();
  }
});

test("indices wrapping past 2^32: requests across the wrap are served in order", async () => {
  for (const protocol of ["x86_32-abi", "x86_64-abi"] as const) {
    const disk = image("raw");
    const w = await world(disk, { protocol, ringPageOrder: 0, startIndex: 2 ** 32 - 45 });
    await workload(w, disk, 99, 16);
    assert.ok(w.frontend.reqProdPvt < 1000, "the indices wrapped");
    assert.equal(w.errors, []);
    stop(w);
  }
});

test("malformed requests get ERROR, unknown operations EOPNOTSUPP, and every one is answered with its id", async () => {
  const disk = image("raw");
  const w = await world(disk, { protocol: "x86_32-abi" });
  const f = w.frontend;
  const frame = 40;
  const gref = f.grant(frame, false);
  const seg = (first: number, last: number) => ({ gref, firstSect: first, lastSect: last });
  const twelve = Array.from({ length: 12 }, () => seg(0, 0));
  const cases: [string, Parameters<XenBlockFrontend["enqueue"]>[0], number][] = [
    ["12 segments", { operation: BlkifOp.Read, segments: twelve }, Err],
    ["nr_segments 200 with 11 given", { operation: BlkifOp.Read, segments: twelve.slice(0, 11), nrSegments: 200 }, Err],
    ["no segments", { operation: BlkifOp.Read, segments: [] }, Err],
    ["first_sect > last_sect", { operation: BlkifOp.Read, segments: [seg(5, 2)] }, Err],
    ["last_sect 8", { operation: BlkifOp.Write, segments: [seg(0, 8)] }, Err],
    ["past the end", { operation: BlkifOp.Read, sector: 2047n, segments: [seg(0, 1)] }, Err],
    ["sector wrapping 2^64", { operation: BlkifOp.Read, sector: 2n ** 64n - 1n, segments: [seg(0, 1)] }, Err],
    ["discard past the end", { operation: BlkifOp.Discard, sector: 2000n, discard: { nrSectors: 49n } }, Err],
    ["secure discard", { operation: BlkifOp.Discard, sector: 0n, discard: { nrSectors: 8n, flag: 1 } }, EOpNotSupp],
    ["reserved op 4", { operation: BlkifOp.Reserved1 }, EOpNotSupp],
    ["op 7", { operation: 7 }, EOpNotSupp],
    ["op 255", { operation: 255 }, EOpNotSupp],
    ["indirect with op flush", { operation: BlkifOp.Indirect, indirect: { operation: BlkifOp.FlushDiskcache, nrSegments: 1, grefs: [gref] } }, Err],
    ["indirect with 0 segments", { operation: BlkifOp.Indirect, indirect: { operation: BlkifOp.Read, nrSegments: 0, grefs: [gref] } }, Err],
    ["indirect over the maximum", { operation: BlkifOp.Indirect, indirect: { operation: BlkifOp.Read, nrSegments: 257, grefs: [gref] } }, Err],
    ["a fine read", { operation: BlkifOp.Read, sector: 8n, segments: [seg(0, 7)] }, Ok],
  ];
  const answers = cases.map(([, request]) => f.enqueue({ ...request, id: 0xabcdef_0000_0000n + BigInt(f.reqProdPvt) }));
  f.push();
  for (let i = 0; i < cases.length; i++) {
    const response = await answers[i].response;
    assert.is(response.status, cases[i][2], cases[i][0]);
    assert.is(response.id, answers[i].id, cases[i][0]);
    assert.is(response.operation, cases[i][1].operation, `${cases[i][0]}: the operation echoed`);
  }
  assert.equal(w.errors, []);
  stop(w);
});

test("writes to a read-only disk answer ERROR and change nothing; reads work", async () => {
  const disk = image("raw");
  disk.write(0, pattern(RING_PAGE_SIZE, 5));
  const w = await world(disk, { readOnly: true });
  assert.is(w.dom0.readString(`${BACK}/info`), "4");
  assert.is(w.dom0.readString(`${BACK}/mode`), "r");
  assert.is((await w.frontend.write(0n, new Uint8Array(RING_PAGE_SIZE))).status, Err);
  assert.is((await w.frontend.writeIndirect(0n, new Uint8Array(RING_PAGE_SIZE))).status, Err);
  assert.is((await w.frontend.barrier(0n, new Uint8Array(SECTOR))).status, Err);
  assert.is((await w.frontend.discard(0n, 8n)).status, EOpNotSupp, "discard is not offered on a read-only disk");
  const r = await w.frontend.read(0n, 8);
  assert.equal(r.data, pattern(RING_PAGE_SIZE, 5));
  assert.equal(disk.read(0, RING_PAGE_SIZE), pattern(RING_PAGE_SIZE, 5));
  stop(w);
});

test("bad, foreign and read-only grants: ERROR, and nothing outside what was granted is touched", async () => {
  const disk = image("raw");
  disk.write(0, pattern(RING_PAGE_SIZE, 8));
  const w = await world(disk);
  const f = w.frontend;
  const foreignFrame = 50;
  const readonlyFrame = 51;
  w.memory.fill(0x5a, foreignFrame * RING_PAGE_SIZE, (readonlyFrame + 1) * RING_PAGE_SIZE);
  const foreign = w.grants.grantAccess(3, foreignFrame, false);
  const readonly = f.grant(readonlyFrame, true);
  const ended = f.grant(52, false);
  w.grants.endAccess(ended);
  const cases: [string, number, number][] = [
    ["a reference past the table", 100000, BlkifOp.Read],
    ["a reserved entry never granted", 1, BlkifOp.Read],
    ["an ended grant", ended, BlkifOp.Write],
    ["a grant to domain 3", foreign, BlkifOp.Read],
    ["a grant to domain 3 (write)", foreign, BlkifOp.Write],
    ["a read into a read-only grant", readonly, BlkifOp.Read],
  ];
  for (const [label, gref, operation] of cases) {
    const { response } = f.enqueue({ operation, sector: 16n, segments: [{ gref, firstSect: 0, lastSect: 7 }] });
    f.push();
    assert.is((await response).status, Err, label);
  }
  // An indirect request whose indirect page is foreign, and one whose segments name a foreign grant.
  const { response: r1 } = f.enqueue({ operation: BlkifOp.Indirect, sector: 0n, indirect: { operation: BlkifOp.Read, nrSegments: 1, grefs: [foreign] } });
  f.push();
  assert.is((await r1).status, Err, "a foreign indirect page");
  const indirectFrame = 53;
  const view = new DataView(w.memory.buffer, indirectFrame * RING_PAGE_SIZE, RING_PAGE_SIZE);
  view.setUint32(0, foreign, true);
  view.setUint8(4, 0);
  view.setUint8(5, 7);
  const indirectRef = f.grant(indirectFrame, true);
  const { response: r2 } = f.enqueue({ operation: BlkifOp.Indirect, sector: 0n, indirect: { operation: BlkifOp.Read, nrSegments: 1, grefs: [indirectRef] } });
  f.push();
  assert.is((await r2).status, Err, "an indirect segment naming a foreign grant");
  assert.ok(w.memory.subarray(foreignFrame * RING_PAGE_SIZE, (readonlyFrame + 1) * RING_PAGE_SIZE).every((b) => b === 0x5a), "the foreign and read-only pages are untouched");
  assert.equal(disk.read(0, RING_PAGE_SIZE), pattern(RING_PAGE_SIZE, 8), "the disk is untouched");
  assert.equal(w.errors, []);
  stop(w);
});

test("indirect segments are checked on the private copy: first > last, last 8, misaligned count, past the end", async () => {
  const disk = image("raw");
  const w = await world(disk);
  const f = w.frontend;
  const dataRef = f.grant(60, false);
  const pageFrame = 61;
  const pageRef = f.grant(pageFrame, true);
  const view = new DataView(w.memory.buffer, pageFrame * RING_PAGE_SIZE, RING_PAGE_SIZE);
  const cases: [string, bigint, [number, number][], number][] = [
    ["first > last", 0n, [[3, 2]], Err],
    ["last 8", 0n, [[0, 8]], Err],
    ["past the end", 2040n, [[0, 7], [0, 7]], Err],
    ["fine", 2032n, [[0, 7], [0, 7]], Ok],
  ];
  for (const [label, sector, segs, status] of cases) {
    segs.forEach(([first, last], i) => {
      view.setUint32(i * 8, dataRef, true);
      view.setUint8(i * 8 + 4, first);
      view.setUint8(i * 8 + 5, last);
    });
    const { response } = f.enqueue({ operation: BlkifOp.Indirect, sector, indirect: { operation: BlkifOp.Read, nrSegments: segs.length, grefs: [pageRef] } });
    f.push();
    assert.is((await response).status, status, label);
  }
  assert.equal(w.errors, []);
  stop(w);
});

test("req_prod far ahead: the ring halts without crashing, nothing is consumed, and a reconnect serves again", async () => {
  const disk = image("raw");
  const w = await world(disk);
  const f = w.frontend;
  const { response } = f.enqueue({ operation: BlkifOp.Read, segments: [{ gref: f.grant(70, false), firstSect: 0, lastSect: 0 }] });
  f.ring.setU32(SRING_REQ_PROD, (f.reqProdPvt + 1_000_000) >>> 0);
  f.kick();
  await settle();
  assert.ok(w.device.dataplane.halted);
  assert.is(f.ring.getU32(SRING_RSP_PROD), 0, "no response");
  assert.is(w.errors.length, 1);
  assert.match(String(w.errors[0]), /halted/);
  let answered = false;
  void response.then(() => (answered = true));
  f.kick();
  await settle();
  assert.not.ok(answered, "a halted ring stays halted");
  assert.is(w.device.dataplane.stats.requests, 0);

  // req_prod behind req_cons is as impossible.
  f.close();
  await until(() => w.device.backend.state === XenbusState.Closed);
  const again = new XenBlockFrontend({ store: w.store.connect(GUEST), devid: DEVID, grants: w.grants, memory: w.memory, channels: w.channels, frames: { first: 0, count: FRAMES } });
  again.start();
  await again.connected();
  await w.device.backend.reached(XenbusState.Connected);
  assert.not.ok(w.device.dataplane.halted);
  assert.is((await again.write(0n, pattern(SECTOR, 1))).status, Ok);
  again.ring.setU32(SRING_REQ_PROD, 0xfffffff0);
  again.kick();
  await settle();
  assert.ok(w.device.dataplane.halted);
  w.device.destroy();
  again.xenbus.stop();
  f.xenbus.stop();
});

test("a ring changed while being served: each request is served and answered as it was copied", async () => {
  const disk = image("raw");
  const w = await world(disk);
  const f = w.frontend;
  const frames = [80, 81, 82];
  const grefs = frames.map((frame) => f.grant(frame, true));
  frames.forEach((frame, i) => w.memory.fill(i + 1, frame * RING_PAGE_SIZE, (frame + 1) * RING_PAGE_SIZE));
  // During the first write, the guest rewrites the slots of the second and third (already copied).
  const originalWrite = disk.write.bind(disk);
  let tampered = false;
  disk.write = (offset: number, data: Uint8Array) => {
    if (!tampered) {
      tampered = true;
      for (const index of [1, 2]) {
        const at = SRING_HEADER_SIZE + index * f.layout.entrySize;
        const slot = new Uint8Array(f.layout.entrySize);
        const view = new DataView(slot.buffer);
        view.setUint8(f.layout.operation, BlkifOp.Write);
        view.setUint8(f.layout.nrSegments, 11);
        view.setBigUint64(f.layout.id, 666n, true);
        view.setBigUint64(f.layout.sectorNumber, 1000n, true);
        f.ring.write(at, slot);
      }
    }
    originalWrite(offset, data);
  };
  const sent = grefs.map((gref, i) => f.enqueue({ operation: BlkifOp.Write, sector: BigInt(8 * i), segments: [{ gref, firstSect: 0, lastSect: 7 }], id: 10n + BigInt(i) }));
  f.push();
  const responses = await Promise.all(sent.map((s) => s.response));
  assert.ok(tampered);
  assert.equal(responses.map((r) => [r.id, r.status]), [[10n, Ok], [11n, Ok], [12n, Ok]]);
  for (let i = 0; i < 3; i++) assert.ok(disk.read(8 * i * SECTOR, RING_PAGE_SIZE).every((b) => b === i + 1), `request ${i} wrote what was copied`);
  assert.ok(disk.read(1000 * SECTOR, SECTOR).every((b) => b === 0), "the rewritten slots' sector was not written");
  stop(w);
});

test("responses: every byte of the ABI's struct written (no stale padding), notifications follow rsp_event, req_event is re-armed", async () => {
  for (const protocol of ["x86_32-abi", "x86_64-abi"] as const) {
    const w = await world(image("raw"), { protocol, ringPageOrder: 0 });
    const f = w.frontend;
    const gref = f.grant(70, false);
    // Fill the ring's slots with garbage first: responses overwrite their whole struct only.
    const garbage = new Uint8Array(RING_PAGE_SIZE - SRING_HEADER_SIZE).fill(0xa5);
    f.ring.write(SRING_HEADER_SIZE, garbage);
    const { response } = f.enqueue({ operation: BlkifOp.Read, segments: [{ gref, firstSect: 0, lastSect: 0 }], id: 0x1122334455667788n });
    f.push();
    await response;
    const slot = new Uint8Array(f.layout.entrySize);
    f.ring.read(SRING_HEADER_SIZE, slot);
    const size = f.layout.responseSize;
    assert.is(size, protocol === "x86_32-abi" ? 12 : 16);
    assert.equal([...slot.subarray(0, size)], [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, BlkifOp.Read, 0, 0, 0, ...new Array(size - 12).fill(0)], protocol);
    assert.is(f.ring.getU32(SRING_REQ_EVENT), f.reqProdPvt + 1, "req_event = req_cons + 1 after the final check");

    // A frontend that does not want to hear (rsp_event far away) is not notified, but the responses are published.
    const before = w.device.dataplane.stats.notifications;
    f.ring.setU32(SRING_RSP_EVENT, 0x80000000);
    const second = f.enqueue({ operation: BlkifOp.FlushDiskcache });
    f.push();
    await settle();
    assert.is(w.device.dataplane.stats.notifications, before);
    assert.is(f.ring.getU32(SRING_RSP_PROD), 2);
    // rsp_event in (old, new] notifies.
    f.ring.setU32(SRING_RSP_EVENT, 3);
    const third = f.enqueue({ operation: BlkifOp.FlushDiskcache });
    f.push();
    assert.is((await third.response).status, Ok);
    assert.is(w.device.dataplane.stats.notifications, before + 1);
    assert.is((await second.response).status, Ok, "collected with the later notification");
    stop(w);
  }
});

test("a frontend that keeps posting: more than a ring per wake is served over several turns, none left behind", async () => {
  const disk = image("raw");
  const w = await world(disk, { ringPageOrder: 0, maxBatch: 8 });
  const f = w.frontend;
  const gref = f.grant(70, false);
  const answered: Promise<unknown>[] = [];
  // Post 32 (a full ring) at once; then, as each response comes back, the tests's loop posts again.
  for (let round = 0; round < 10; round++) {
    for (let i = 0; i < 32 - f.outstanding; i++) answered.push(f.enqueue({ operation: BlkifOp.Read, sector: BigInt(i), segments: [{ gref, firstSect: 0, lastSect: 0 }] }).response);
    f.push();
    await Promise.all(answered);
  }
  assert.is(w.device.dataplane.stats.requests, answered.length);
  assert.ok(w.device.dataplane.stats.passes >= answered.length / 8);
  stop(w);
});

test("connect refuses bad keys with the seed's errors in the error node: order above the maximum, missing refs, unknown protocol", async () => {
  const cases: [string, (k: Record<string, string | number>) => Record<string, string | number>, string][] = [
    ["order 5", (k) => ({ ...k, "ring-page-order": 5 }), "invalid ring-page-order (5)"],
    ["order junk", (k) => ({ ...k, "ring-page-order": "two" }), "invalid ring-page-order (two)"],
    ["a missing ring-ref3", (k) => { const { "ring-ref3": _gone, ...rest } = k; return rest; }, "failed to read ring-ref3"],
    ["no ring-ref", (k) => { const { "ring-ref": _gone, ...rest } = k; return rest; }, "failed to read ring-ref"],
    ["no event-channel", (k) => { const { "event-channel": _gone, ...rest } = k; return rest; }, "failed to read event-channel"],
    ["protocol arm-abi", (k) => ({ ...k, protocol: "arm-abi" }), "unknown protocol (arm-abi)"],
    ["a ring-ref to nothing", (k) => ({ ...k, "ring-ref": 4000 }), "grant 4000"],
    ["ring-ref2 to nothing, after 0 and 1 were mapped", (k) => ({ ...k, "ring-ref2": 4000 }), "grant 4000"],
    ["an event channel that is not for the backend", (k) => ({ ...k, "event-channel": 999 }), "port 999"],
  ];
  for (const [label, tamper, message] of cases) {
    const order = /ring-ref[23]|^order/.test(label) ? 2 : 0;
    const w = await world(image("raw"), { ringPageOrder: order, tamperKeys: tamper, connect: false });
    await w.device.backend.reached(XenbusState.Closing);
    assert.ok(w.dom0.readString(ERROR_NODE).includes(message), `${label}: ${w.dom0.readString(ERROR_NODE)}`);
    assert.not.ok(w.device.dataplane.connected, label);
    // The ring's grants are the frontend's first: references 8 (the first unreserved) on.
    for (let ref = 8; ref < 8 + (1 << order); ref++) assert.is(w.grants.pins(ref), 0, `${label}: grant ${ref} is not left mapped`);
    stop(w);
  }
});

test("disconnect and reconnect: the ring is unmapped and the port closed; a new frontend is served", async () => {
  const disk = image("qcow2");
  const w = await world(disk, { ringPageOrder: 3 });
  const data = pattern(8 * SECTOR, 4);
  assert.is((await w.frontend.write(24n, data)).status, Ok);
  const refs = [0, 1, 2, 3, 4, 5, 6, 7].map((i) => Number(w.dom0.readString(`${FRONT}/ring-ref${i}`)));
  w.frontend.close();
  await w.device.backend.reached(XenbusState.Closed);
  await w.frontend.xenbus.reached(XenbusState.Closed);
  assert.not.ok(w.device.dataplane.connected);
  assert.ok(refs.every((ref) => w.grants.pins(ref) === 0), "the ring pages are unmapped");
  w.frontend.xenbus.stop();
  const again = new XenBlockFrontend({ store: w.store.connect(GUEST), devid: DEVID, grants: w.grants, memory: w.memory, channels: w.channels, frames: { first: 0, count: FRAMES }, protocol: "x86_32-abi", ringPageOrder: 1 });
  again.start();
  await again.connected();
  await w.device.backend.reached(XenbusState.Connected);
  const r = await again.read(24n, 8);
  assert.equal(r.data, data);
  assert.equal(w.errors, []);
  w.device.destroy();
  again.xenbus.stop();
});

test("unplug: online 0 and Closing; the frontend lets go, the backend stops the dataplane and removes its directory", async () => {
  const w = await world(image("raw"));
  assert.is((await w.frontend.flush()).status, Ok);
  w.device.unplug();
  await w.frontend.xenbus.reached(XenbusState.Closed);
  await until(() => w.removed());
  assert.not.ok(w.device.dataplane.connected);
  assert.is(readOptional(w.dom0, `${BACK}/state`), undefined, "the backend directory is gone");
  assert.equal(w.errors, []);
  stop(w);
});

test.after(() => temp.remove());

test.run();
