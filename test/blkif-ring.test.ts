import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode } from "../host/errors.ts";
import { seededRandom } from "../host/prng.ts";
import { Heap } from "../host/wasm/heap.ts";
import {
  BlkifAbi, BlkifOp, BlkifStatus, RESPONSE_STATUS, RING_PAGE_SIZE, SRING_HEADER_SIZE, SRING_REQ_EVENT, SRING_REQ_PROD,
  SRING_RSP_EVENT, SRING_RSP_PROD, abiForProtocol, layoutFor, ringEntries,
} from "../host/xen/blkif/ring-layout.ts";
import {
  BlkifRequestParser, RECORD_SIZE, RequestStatus, responseStatusFor, type BlkifDiskLimits, type BlkifRequest, type ParseResult,
} from "../host/xen/blkif/request-parser.ts";
import { errorCode } from "./support/errors.ts";
import { FLAVORS, bytesEqual } from "./support/flavors.ts";

const test = suite("blkif ring: requests copied once, checked, and equal on every flavor");
const ABIS: BlkifAbi[] = [BlkifAbi.X86_32, BlkifAbi.X86_64];
const RING = 4096; // heap offset of the ring in every test heap

/** A request to put in a slot; absent fields are zero. */
interface Req {
  op: number;
  /** nr_segments (rw), flag (discard) or indirect_op (indirect). */
  byte1?: number;
  /** handle (rw, discard) or nr_segments (indirect). */
  word2?: number;
  id?: bigint;
  sector?: bigint;
  segs?: [number, number, number][];
  nrSectors?: bigint;
  indirectHandle?: number;
  grefs?: number[];
}

/** A heap holding a ring of `pages` pages at RING, slots pre-filled with stale bytes. */
function ringHeap(pages: number, fill = 0xa5): Heap {
  const heap = Heap.create(RING + pages * RING_PAGE_SIZE + 512 * RECORD_SIZE + 4096);
  heap.alloc(RING + pages * RING_PAGE_SIZE);
  heap.u8.fill(fill, RING + SRING_HEADER_SIZE, RING + pages * RING_PAGE_SIZE);
  return heap;
}

function writeRequest(heap: Heap, abi: BlkifAbi, entries: number, index: number, req: Req): void {
  const l = layoutFor(abi);
  const at = RING + SRING_HEADER_SIZE + ((index & (entries - 1)) >>> 0) * l.entrySize;
  const view = new DataView(heap.memory.buffer);
  view.setUint8(at + l.operation, req.op);
  view.setUint8(at + l.nrSegments, req.byte1 ?? 0);
  view.setUint16(at + l.handle, req.word2 ?? 0, true);
  view.setBigUint64(at + l.id, req.id ?? 0n, true);
  view.setBigUint64(at + l.sectorNumber, req.sector ?? 0n, true);
  if (req.op === BlkifOp.Discard) view.setBigUint64(at + l.discardNrSectors, req.nrSectors ?? 0n, true);
  else if (req.op === BlkifOp.Indirect) {
    view.setUint16(at + l.indirectHandle, req.indirectHandle ?? 0, true);
    (req.grefs ?? []).forEach((g, i) => view.setUint32(at + l.indirectGrefs + 4 * i, g, true));
  } else {
    (req.segs ?? []).forEach(([gref, first, last], i) => {
      view.setUint32(at + l.segments + 8 * i, gref, true);
      view.setUint8(at + l.segments + 8 * i + 4, first);
      view.setUint8(at + l.segments + 8 * i + 5, last);
    });
  }
}

function setReqProd(heap: Heap, value: number): void {
  new DataView(heap.memory.buffer).setUint32(RING + SRING_REQ_PROD, value >>> 0, true);
}

/** A rw request with valid segments covering `sectors` sectors from `sector`. */
function rw(op: number, sector: bigint, segs: [number, number, number][] = [[7, 0, 7]]): Req {
  return { op, byte1: segs.length, word2: 0x1234, id: 0xfeedface_00c0ffeen, sector, segs };
}

const DISK: BlkifDiskLimits = { sectors: 1000, readOnly: false };

/**
 * Puts `reqs` in a fresh ring at index `start`, parses with every flavor, asserts they agree
 * byte for byte, and returns the twin's result and decoded requests.
 */
function parseAll(
  reqs: Req[], options: { abi?: BlkifAbi; pages?: number; start?: number; disk?: BlkifDiskLimits } = {},
): { result: ParseResult; requests: BlkifRequest[] } {
  const { abi = BlkifAbi.X86_64, pages = 1, start = 0, disk = DISK } = options;
  const entries = ringEntries(pages, abi);
  const image = ringHeap(pages);
  reqs.forEach((r, i) => writeRequest(image, abi, entries, start + i, r));
  setReqProd(image, start + reqs.length);
  return parseRing(image.u8.slice(0, RING + pages * RING_PAGE_SIZE), { abi, pages, disk, reqCons: start, rspProdPvt: start });
}

/** Parses a ring image with every flavor; asserts the results and record bytes agree. */
function parseRing(
  image: Uint8Array,
  o: { abi: BlkifAbi; pages: number; disk: BlkifDiskLimits; reqCons: number; rspProdPvt: number; maxRequests?: number },
): { result: ParseResult; requests: BlkifRequest[] } {
  const runs = FLAVORS.map((flavor) => {
    const heap = Heap.create(image.length + 512 * RECORD_SIZE + 4096);
    heap.alloc(image.length);
    heap.u8.set(image);
    const parser = new BlkifRequestParser(heap, { ring: RING, pages: o.pages, abi: o.abi, kernels: flavor }, o.disk);
    const result = parser.parse(o.reqCons, o.rspProdPvt, o.maxRequests);
    const records = heap.u8.slice(parser.records, parser.records + parser.entries * RECORD_SIZE);
    return { flavor, parser, result, records };
  });
  const twin = runs.find((r) => r.flavor === "ts")!;
  for (const run of runs) {
    assert.equal(run.result, twin.result, `${run.flavor}: result differs from the twin`);
    if (!bytesEqual(run.records, twin.records)) {
      const at = run.records.findIndex((b, i) => b !== twin.records[i]);
      assert.unreachable(`${run.flavor}: records differ from the twin at byte ${at} (record ${Math.floor(at / RECORD_SIZE)}, field ${at % RECORD_SIZE})`);
    }
  }
  const requests = Array.from({ length: twin.result.count }, (_, i) => twin.parser.request(i));
  return { result: twin.result, requests };
}

test("ring entries: 32 per page for both ABIs, rounded down to a power of two (ring.h __RD32)", () => {
  for (const abi of ABIS) {
    assert.equal([1, 2, 4, 8, 16].map((p) => ringEntries(p, abi)), [32, 64, 128, 256, 512]);
    assert.is(ringEntries(3, abi), 64, "3 pages hold 108 or 111 entries: 64 are used");
  }
  assert.is(abiForProtocol("x86_32-abi"), BlkifAbi.X86_32);
  assert.is(abiForProtocol("x86_64-abi"), BlkifAbi.X86_64);
  assert.is(abiForProtocol("native"), BlkifAbi.X86_64);
});

test("a valid request of every operation decodes field for field, on both ABIs", () => {
  for (const abi of ABIS) {
    const segs: [number, number, number][] = Array.from({ length: 11 }, (_, i) => [0xa0000000 + i, i % 8, 7]);
    const { result, requests } = parseAll([
      rw(BlkifOp.Read, 5n, segs),
      rw(BlkifOp.Write, 0n, [[1, 2, 3]]),
      { op: BlkifOp.FlushDiskcache, byte1: 0, word2: 9, id: 77n },
      { op: BlkifOp.Discard, byte1: 1, word2: 3, id: 78n, sector: 10n, nrSectors: 990n },
      { op: BlkifOp.Indirect, byte1: BlkifOp.Write, word2: 513, id: 79n, sector: 8n, indirectHandle: 0x5151, grefs: [11, 22, 33, 44] },
    ], { abi, disk: { ...DISK, maxIndirectSegments: 1024 } });
    assert.equal(result, { count: 5, reqCons: 5, reqProd: 5, overflow: false });
    const [read, write, flush, discard, indirect] = requests;
    assert.equal(read.segments, segs.map(([gref, firstSect, lastSect]) => ({ gref, firstSect, lastSect })));
    assert.equal([read.status, read.operation, read.handle, read.nrSegments, read.id, read.sectorNumber],
      [RequestStatus.Ok, 0, 0x1234, 11, 0xfeedface_00c0ffeen, 5n]);
    assert.is(read.nrSectors, BigInt(segs.reduce((n, [, f, l]) => n + l - f + 1, 0)));
    assert.equal([write.status, write.nrSectors, write.segments], [RequestStatus.Ok, 2n, [{ gref: 1, firstSect: 2, lastSect: 3 }]]);
    assert.equal([flush.status, flush.handle, flush.id, flush.nrSegments], [RequestStatus.Ok, 9, 77n, 0]);
    assert.equal([discard.status, discard.discardFlag, discard.handle, discard.sectorNumber, discard.nrSectors, discard.nrSegments],
      [RequestStatus.Ok, 1, 3, 10n, 990n, 0]);
    assert.equal([indirect.status, indirect.indirectOp, indirect.nrSegments, indirect.handle, indirect.indirectGrefs],
      [RequestStatus.Ok, BlkifOp.Write, 513, 0x5151, [11, 22]], "513 segments need 2 indirect pages");
  }
});

test("hostile requests get the status of the first check they fail", () => {
  const cases: [string, Req, number, BlkifDiskLimits?][] = [
    ["nr_segments 0 on a read", { ...rw(BlkifOp.Read, 0n, []), byte1: 0 }, RequestStatus.BadSegmentCount],
    ["nr_segments 0 on a write", { ...rw(BlkifOp.Write, 0n, []), byte1: 0 }, RequestStatus.BadSegmentCount],
    ["nr_segments 11", rw(BlkifOp.Read, 0n, Array.from({ length: 11 }, () => [1, 0, 0])), RequestStatus.Ok],
    ["nr_segments 12", { ...rw(BlkifOp.Read, 0n, Array.from({ length: 11 }, () => [1, 0, 0])), byte1: 12 }, RequestStatus.BadSegmentCount],
    ["nr_segments 255", { ...rw(BlkifOp.Write, 0n, Array.from({ length: 11 }, () => [1, 0, 0])), byte1: 255 }, RequestStatus.BadSegmentCount],
    ["flush with segments", rw(BlkifOp.FlushDiskcache, 0n), RequestStatus.Ok],
    ["first_sect > last_sect", rw(BlkifOp.Read, 0n, [[1, 0, 7], [2, 5, 4]]), RequestStatus.BadSegment],
    ["last_sect 8", rw(BlkifOp.Read, 0n, [[1, 0, 8]]), RequestStatus.BadSegment],
    ["last_sect 255", rw(BlkifOp.Write, 0n, [[1, 3, 255]]), RequestStatus.BadSegment],
    ["ends exactly at the disk's end", rw(BlkifOp.Read, 992n), RequestStatus.Ok],
    ["one sector past the end", rw(BlkifOp.Read, 993n), RequestStatus.OutOfRange],
    ["sector_number near 2^64 (wraps)", rw(BlkifOp.Read, 2n ** 64n - 4n), RequestStatus.OutOfRange],
    ["sector_number 2^53", rw(BlkifOp.Read, 2n ** 53n), RequestStatus.OutOfRange],
    ["discard past the end", { op: BlkifOp.Discard, sector: 500n, nrSectors: 501n }, RequestStatus.OutOfRange],
    ["discard wrapping 2^64", { op: BlkifOp.Discard, sector: 8n, nrSectors: 2n ** 64n - 4n }, RequestStatus.OutOfRange],
    ["discard of nothing at the end", { op: BlkifOp.Discard, sector: 1000n, nrSectors: 0n }, RequestStatus.Ok],
    ["write to a read-only disk", rw(BlkifOp.Write, 0n), RequestStatus.ReadOnly, { ...DISK, readOnly: true }],
    ["read of a read-only disk", rw(BlkifOp.Read, 0n), RequestStatus.Ok, { ...DISK, readOnly: true }],
    ["flush of a read-only disk", { op: BlkifOp.FlushDiskcache }, RequestStatus.ReadOnly, { ...DISK, readOnly: true }],
    ["discard on a read-only disk", { op: BlkifOp.Discard, nrSectors: 1n }, RequestStatus.ReadOnly, { ...DISK, readOnly: true }],
    ["barrier on a read-only disk", rw(BlkifOp.WriteBarrier, 0n), RequestStatus.ReadOnly, { ...DISK, readOnly: true, barrier: true }],
    ["indirect write on a read-only disk", { op: BlkifOp.Indirect, byte1: BlkifOp.Write, word2: 1 }, RequestStatus.ReadOnly, { ...DISK, readOnly: true }],
    ["indirect read on a read-only disk", { op: BlkifOp.Indirect, byte1: BlkifOp.Read, word2: 1 }, RequestStatus.Ok, { ...DISK, readOnly: true }],
    ["barrier not advertised", rw(BlkifOp.WriteBarrier, 0n), RequestStatus.UnsupportedOp],
    ["barrier advertised", rw(BlkifOp.WriteBarrier, 0n), RequestStatus.Ok, { ...DISK, barrier: true }],
    ["flush not advertised", { op: BlkifOp.FlushDiskcache }, RequestStatus.UnsupportedOp, { ...DISK, flush: false }],
    ["discard not advertised", { op: BlkifOp.Discard }, RequestStatus.UnsupportedOp, { ...DISK, discard: false }],
    ["reserved op 4", rw(BlkifOp.Reserved1, 0n), RequestStatus.UnsupportedOp],
    ["unknown op 7", rw(7, 0n), RequestStatus.UnsupportedOp],
    ["unknown op 255", rw(255, 0n), RequestStatus.UnsupportedOp],
    ["indirect with 256 segments", { op: BlkifOp.Indirect, byte1: BlkifOp.Read, word2: 256 }, RequestStatus.Ok],
    ["indirect with 257 segments", { op: BlkifOp.Indirect, byte1: BlkifOp.Read, word2: 257 }, RequestStatus.BadSegmentCount],
    ["indirect with 65535 segments", { op: BlkifOp.Indirect, byte1: BlkifOp.Read, word2: 65535 }, RequestStatus.BadSegmentCount],
    ["indirect with 0 segments", { op: BlkifOp.Indirect, byte1: BlkifOp.Read, word2: 0 }, RequestStatus.BadSegmentCount],
    ["indirect flush", { op: BlkifOp.Indirect, byte1: BlkifOp.FlushDiskcache, word2: 1 }, RequestStatus.BadIndirectOp],
    ["indirect not advertised", { op: BlkifOp.Indirect, byte1: BlkifOp.Read, word2: 1 }, RequestStatus.UnsupportedOp, { ...DISK, maxIndirectSegments: 0 }],
    ["4 KiB sectors: aligned", rw(BlkifOp.Read, 8n, [[1, 0, 7]]), RequestStatus.Ok, { ...DISK, logicalSectorSize: 4096 }],
    ["4 KiB sectors: sector_number not aligned", rw(BlkifOp.Read, 4n, [[1, 0, 7]]), RequestStatus.Misaligned, { ...DISK, logicalSectorSize: 4096 }],
    ["1 KiB sectors: odd first_sect", rw(BlkifOp.Read, 0n, [[1, 1, 2]]), RequestStatus.Misaligned, { ...DISK, logicalSectorSize: 1024 }],
    ["1 KiB sectors: odd length", rw(BlkifOp.Read, 0n, [[1, 0, 2]]), RequestStatus.Misaligned, { ...DISK, logicalSectorSize: 1024 }],
    ["bad segment before misalignment", rw(BlkifOp.Read, 1n, [[1, 3, 1]]), RequestStatus.BadSegment, { ...DISK, logicalSectorSize: 4096 }],
    ["read-only before a bad count", { ...rw(BlkifOp.Write, 0n), byte1: 200 }, RequestStatus.ReadOnly, { ...DISK, readOnly: true }],
  ];
  for (const abi of ABIS) {
    for (const [name, req, status, disk] of cases) {
      const { requests } = parseAll([req], { abi, disk });
      assert.is(requests[0].status, status, `${name} (abi ${abi})`);
    }
  }
  assert.is(responseStatusFor(RequestStatus.UnsupportedOp), BlkifStatus.EOpNotSupp);
  assert.is(responseStatusFor(RequestStatus.OutOfRange), BlkifStatus.Error);
  assert.is(responseStatusFor(RequestStatus.Ok), BlkifStatus.Okay);
});

test("an unknown operation keeps only its id; a rw record keeps only its first 11 segments, padding cleared", () => {
  const stale = { ...rw(200, 5n), id: 0x1122334455667788n };
  const { requests } = parseAll([stale, { ...rw(BlkifOp.Read, 0n, Array.from({ length: 11 }, () => [1, 0, 0])), byte1: 255 }]);
  assert.equal([requests[0].operation, requests[0].id, requests[0].sectorNumber, requests[0].handle, requests[0].segments],
    [200, 0x1122334455667788n, 0n, 0, []]);
  assert.is(requests[1].nrSegments, 255);
  assert.is(requests[1].segments.length, 11);
  assert.is(requests[1].nrSectors, 0n, "no total for a refused request");
});

test("req_prod far ahead, behind req_cons, or over in-flight slots is an overflow: nothing is taken", () => {
  for (const abi of ABIS) {
    for (const pages of [1, 16]) {
      const entries = ringEntries(pages, abi);
      const image = ringHeap(pages);
      for (let i = 0; i < entries; i++) writeRequest(image, abi, entries, i, rw(BlkifOp.Read, BigInt(i)));
      const run = (reqProd: number, reqCons: number, rspProdPvt: number, maxRequests?: number) => {
        setReqProd(image, reqProd);
        const bytes = image.u8.slice(0, RING + pages * RING_PAGE_SIZE);
        return parseRing(bytes, { abi, pages, disk: DISK, reqCons, rspProdPvt, maxRequests }).result;
      };
      const base = 0xffffffff - 5; // every run wraps around 2^32
      const at = (n: number) => (base + n) >>> 0;
      assert.equal(run(at(entries), base, base), { count: entries, reqCons: at(entries), reqProd: at(entries), overflow: false }, "exactly a ring");
      assert.equal(run(at(entries + 1), base, base).overflow, true, "one more than a ring");
      assert.equal(run(at(0x7fffffff), base, base), { count: 0, reqCons: base, reqProd: at(0x7fffffff), overflow: true }, "far ahead");
      assert.equal(run(at(-1), base, base).overflow, true, "behind req_cons");
      assert.equal(run(at(3), at(5), base).overflow, true, "behind req_cons, not behind rsp_prod_pvt");
      assert.equal(run(at(entries + 1), at(4), at(1)), { count: entries - 3, reqCons: at(entries + 1), reqProd: at(entries + 1), overflow: false }, "in flight + new = a ring");
      assert.equal(run(at(entries + 2), at(4), at(1)).overflow, true, "in flight + new > a ring (RING_REQUEST_PROD_OVERFLOW)");
      assert.equal(run(at(10), base, base, 3), { count: 3, reqCons: at(3), reqProd: at(10), overflow: false }, "maxRequests");
      assert.equal(run(base, base, base).count, 0, "nothing new");
    }
  }
});

test("random and adversarial rings: every flavor writes the same records (all ABIs, 1..16 pages, wrapping indices)", () => {
  const random = seededRandom(20260122);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)];
  const u32 = () => Math.floor(random() * 2 ** 32);
  const u64 = () => (BigInt(u32()) << 32n) | BigInt(u32());
  const trials = Number(process.env.TANDEM_BLKIF_TRIALS ?? 40);
  let statuses = new Set<number>();
  for (let trial = 0; trial < trials; trial++) {
    const abi = pick(ABIS);
    const pages = 1 + Math.floor(random() * 16);
    const entries = ringEntries(pages, abi);
    const sectors = pick([0, 1, 8, 1000, 2 ** 32 + 7, 2 ** 53 - 1]);
    const disk: BlkifDiskLimits = {
      sectors, readOnly: random() < 0.2, logicalSectorSize: pick([512, 512, 1024, 4096]),
      flush: random() < 0.8, barrier: random() < 0.5, discard: random() < 0.8, maxIndirectSegments: pick([0, 11, 256, 4096]),
    };
    const image = ringHeap(pages, u32() & 0xff);
    const start = random() < 0.5 ? u32() : (0xffffffff - Math.floor(random() * entries)) >>> 0;
    const count = Math.floor(random() * (entries + 1));
    const view = new DataView(image.memory.buffer);
    for (let i = 0; i < count; i++) {
      if (random() < 0.15) { // pure noise in the slot
        const at = RING + SRING_HEADER_SIZE + (((start + i) & (entries - 1)) >>> 0) * layoutFor(abi).entrySize;
        for (let b = 0; b < layoutFor(abi).entrySize; b++) view.setUint8(at + b, u32() & 0xff);
        continue;
      }
      const op = random() < 0.9 ? pick([0, 0, 1, 1, 2, 3, 5, 6]) : u32() & 0xff;
      const nseg = random() < 0.8 ? 1 + Math.floor(random() * 11) : pick([0, 12, 255]);
      const segs: [number, number, number][] = Array.from({ length: Math.min(nseg, 11) }, () => {
        const first = random() < 0.9 ? Math.floor(random() * 8) : u32() & 0xff;
        const last = random() < 0.9 ? first + Math.floor(random() * (8 - Math.min(first, 7))) : u32() & 0xff;
        return [u32(), first & 0xff, last & 0xff];
      });
      const sector = random() < 0.7 ? BigInt(Math.floor(random() * (sectors + 16))) : u64();
      writeRequest(image, abi, entries, start + i, {
        op, byte1: op === 6 ? pick([0, 1, 3]) : op === 5 ? u32() & 1 : nseg, word2: op === 6 ? pick([0, 1, 256, 257, 4096, 65535]) : u32() & 0xffff,
        id: u64(), sector, segs, nrSectors: random() < 0.8 ? BigInt(Math.floor(random() * 64)) : u64(),
        indirectHandle: u32() & 0xffff, grefs: Array.from({ length: 8 }, u32),
      });
    }
    setReqProd(image, start + count + (random() < 0.1 ? entries : 0));
    const rspProdPvt = random() < 0.8 ? start : (start - Math.floor(random() * (entries - count + 1))) >>> 0;
    const { result, requests } = parseRing(image.u8.slice(0, RING + pages * RING_PAGE_SIZE), {
      abi, pages, disk, reqCons: start, rspProdPvt, maxRequests: random() < 0.8 ? entries : Math.floor(random() * entries),
    });
    if (!result.overflow) statuses = new Set([...statuses, ...requests.map((r) => r.status)]);
  }
  assert.ok(statuses.size >= 7, `the random rings reached ${statuses.size} of the 8 statuses`);
});

test("records are private copies: rewriting the ring after the parse changes none of them", () => {
  for (const flavor of FLAVORS) {
    for (const abi of ABIS) {
      const heap = ringHeap(4);
      const entries = ringEntries(4, abi);
      for (let i = 0; i < entries; i++) writeRequest(heap, abi, entries, i, rw(i % 2, BigInt(i), [[i, 0, 7], [i + 1, 1, 2]]));
      setReqProd(heap, entries);
      const parser = new BlkifRequestParser(heap, { ring: RING, pages: 4, abi, kernels: flavor }, DISK);
      assert.is(parser.parse(0, 0).count, entries);
      const before = heap.u8.slice(parser.records, parser.records + entries * RECORD_SIZE);
      const decoded = parser.request(7);
      heap.u8.fill(0xff, RING, RING + 4 * RING_PAGE_SIZE); // a frontend scribbling over every slot
      assert.ok(bytesEqual(heap.u8.subarray(parser.records, parser.records + entries * RECORD_SIZE), before), `${flavor}: records unchanged`);
      assert.equal(parser.request(7), decoded);
      assert.equal(decoded.segments, [{ gref: 7, firstSect: 0, lastSect: 7 }, { gref: 8, firstSect: 1, lastSect: 2 }]);
    }
  }
});

test("the parser refuses bad arguments with codes", () => {
  const heap = ringHeap(1);
  const ok = { ring: RING, pages: 1, abi: BlkifAbi.X86_64 } as const;
  assert.is(errorCode(() => new BlkifRequestParser(heap, { ...ok, pages: 0 }, DISK)), ErrorCode.BadArgument);
  assert.is(errorCode(() => new BlkifRequestParser(heap, { ...ok, pages: 17 }, DISK)), ErrorCode.BadArgument);
  assert.is(errorCode(() => new BlkifRequestParser(heap, { ...ok, ring: heap.memory.buffer.byteLength - 100 }, DISK)), ErrorCode.OutOfRange);
  assert.is(errorCode(() => new BlkifRequestParser(heap, ok, { ...DISK, sectors: 2 ** 53 })), ErrorCode.BadArgument);
  assert.is(errorCode(() => new BlkifRequestParser(heap, ok, { ...DISK, logicalSectorSize: 768 })), ErrorCode.BadArgument);
  assert.is(errorCode(() => new BlkifRequestParser(heap, ok, { ...DISK, maxIndirectSegments: 4097 })), ErrorCode.BadArgument);
  const parser = new BlkifRequestParser(heap, ok, DISK);
  assert.is(errorCode(() => parser.parse(-1, 0)), ErrorCode.BadArgument);
  assert.is(errorCode(() => parser.parse(2 ** 32, 0)), ErrorCode.BadArgument);
  assert.is(errorCode(() => parser.parse(40, 0)), ErrorCode.BadArgument, "more than a ring in flight");
  assert.is(errorCode(() => parser.parse(0, 0, 33)), ErrorCode.BadArgument);
  assert.is(errorCode(() => parser.request(32)), ErrorCode.OutOfRange);
});

// The honest check: a frontend written in C against Xen's own headers.

const FRONTEND_SOURCE = new URL("./support/blkif-frontend.c", import.meta.url).pathname;

/**
 * Whether this kernel executes 32-bit x86 programs: a trivial one built with `gcc -m32` must exit
 * with its own status (without IA32 emulation, execve refuses it and libuv hands it to /bin/sh).
 */
function runs32Bit(dir: string): boolean {
  const source = join(dir, "probe32.c");
  const probe = join(dir, "probe32");
  writeFileSync(source, "int main(void) { return 42; }\n");
  if (spawnSync("gcc", ["-m32", "-o", probe, source]).status !== 0) return false;
  return spawnSync(probe, []).status === 42;
}

/**
 * Compiles the C frontend with `gcc` and `gcc -m32`, each where it can; prints a notice for a
 * build that failed (or throws under TANDEM_REQUIRE_XEN=1). Null if neither built.
 */
function buildFrontends(): { dir: string; bins: [BlkifAbi, string][] } | null {
  const dir = mkdtempSync(join(tmpdir(), "tandem-blkif-"));
  const bins: [BlkifAbi, string][] = [];
  const problems: string[] = [];
  for (const [abi, flags] of [[BlkifAbi.X86_64, []], [BlkifAbi.X86_32, ["-m32"]]] as const) {
    const out = join(dir, `frontend-${abi}`);
    const cc = spawnSync("gcc", [...flags, "-std=c11", "-O1", "-Wall", "-Werror", "-o", out, FRONTEND_SOURCE], { encoding: "utf8" });
    if (cc.status === 0 && existsSync(out)) {
      if (abi === BlkifAbi.X86_32 && !runs32Bit(dir)) {
        // Not an install problem: this machine's kernel has no 32-bit x86 support (IA32 emulation).
        console.log("  (skipped the 32-bit C frontend: this kernel cannot execute 32-bit x86 programs)");
        continue;
      }
      bins.push([abi, out]);
    } else problems.push(`${["gcc", ...flags].join(" ")}: ${cc.error?.message ?? cc.stderr.trim().split("\n").slice(0, 3).join(" / ")}`);
  }
  if (problems.length > 0) {
    const why = `cannot build test/support/blkif-frontend.c (${problems.join("; ")})`;
    if (process.env.TANDEM_REQUIRE_XEN === "1") {
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`${why}, and TANDEM_REQUIRE_XEN=1: install gcc, gcc-multilib and libxen-dev`);
    }
    console.log(`  (skipped part of the C frontend checks: ${why}; install gcc, gcc-multilib and libxen-dev to run them)`);
  }
  if (bins.length > 0) return { dir, bins };
  rmSync(dir, { recursive: true, force: true });
  return null;
}

/** Parses `key=value` tokens of one line. */
function fields(line: string): Record<string, string> {
  return Object.fromEntries(line.split(" ").slice(1).map((t) => t.split("=") as [string, string]));
}

const EXPECT: Record<string, number> = {
  ok: RequestStatus.Ok, unsupported_op: RequestStatus.UnsupportedOp, bad_segment_count: RequestStatus.BadSegmentCount,
  bad_segment: RequestStatus.BadSegment, out_of_range: RequestStatus.OutOfRange,
};

test("a C frontend built on Xen's ring.h and blkif.h (gcc and gcc -m32): layouts, and every request it wrote", () => {
  const built = buildFrontends();
  if (!built) return;
  try {
    const sectors = 100_000;
    for (const [abi, bin] of built.bins) {
      const layout = layoutFor(abi);
      for (const [pages, start, seed] of [[1, 0, 1], [2, 0xfffffff0, 2], [4, 77, 3], [16, 0xffffff00, 4], [3, 0x80000000, 5]]) {
        const entries = ringEntries(pages, abi);
        const run = spawnSync(bin, [String(pages), String(start), String(entries), String(seed), String(sectors)], { maxBuffer: 1 << 20 });
        assert.is(run.status, 0, `frontend ${pages} pages: ${run.stderr}`);
        const lines = run.stderr.toString("utf8").trim().split("\n");
        const shape = fields(lines[0]);
        assert.equal(shape, {
          entries: String(entries), entry: String(layout.entrySize), id: String(layout.id), sector: String(layout.sectorNumber),
          seg: String(layout.segments), discard_nr: String(layout.discardNrSectors), indirect_handle: String(layout.indirectHandle),
          indirect_grefs: String(layout.indirectGrefs), response: String(layout.responseSize), rsp_status: String(RESPONSE_STATUS),
        }, `gcc's layout (abi ${abi}) is ring-layout.ts's`);

        const ring = new Uint8Array(run.stdout);
        assert.is(ring.length, pages * RING_PAGE_SIZE);
        const header = new DataView(ring.buffer, ring.byteOffset);
        assert.equal([SRING_REQ_PROD, SRING_REQ_EVENT, SRING_RSP_PROD, SRING_RSP_EVENT].map((o) => header.getUint32(o, true)),
          [(start + entries) >>> 0, 1, 0, 1], "SHARED_RING_INIT then RING_PUSH_REQUESTS");
        const image = new Uint8Array(RING + ring.length);
        image.set(ring, RING);
        const { result, requests } = parseRing(image, { abi, pages, disk: { sectors, readOnly: false }, reqCons: start, rspProdPvt: start });
        assert.equal(result, { count: entries, reqCons: (start + entries) >>> 0, reqProd: (start + entries) >>> 0, overflow: false });
        const seen = new Set<string>();
        lines.slice(1).forEach((line, i) => {
          const want = fields(line);
          const got = requests[i];
          const where = `abi ${abi}, ${pages} pages, ${line}`;
          seen.add(want.expect);
          assert.is(Number(want.idx), (start + i) >>> 0, where);
          assert.is(got.status, EXPECT[want.expect], where);
          assert.is(got.operation, Number(want.op), where);
          assert.is(got.id, BigInt(want.id), where);
          if (want.expect === "unsupported_op") return;
          assert.is(got.handle, Number(want.handle), where);
          assert.is(got.sectorNumber, BigInt(want.sector), where);
          if (got.operation === BlkifOp.Discard) {
            assert.equal([got.discardFlag, got.nrSectors], [Number(want.flag), BigInt(want.nr_sectors)], where);
          } else if (got.operation === BlkifOp.Indirect) {
            assert.equal([got.indirectOp, got.nrSegments, got.indirectGrefs], [Number(want.iop), Number(want.nr), want.grefs.split(",").map(Number)], where);
          } else {
            assert.is(got.nrSegments, Number(want.nr), where);
            const segs = want.segs === "" ? [] : want.segs.split(",").map((s) => s.split(":").map(Number));
            assert.equal(got.segments.map((s) => [s.gref, s.firstSect, s.lastSect]), segs, where);
          }
        });
        assert.ok(seen.size >= 4, `the C frontend wrote ${seen.size} kinds of request`);
      }
    }
  } finally {
    rmSync(built.dir, { recursive: true, force: true });
  }
});

test.run();
