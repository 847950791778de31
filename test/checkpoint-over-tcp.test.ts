import { suite } from "uvu";
import * as assert from "uvu/assert";
import { DetectingDirtyLog } from "../host/memory/detecting-dirty-log.ts";
import { GuestMemory, PAGE_SIZE } from "../host/memory/guest-memory.ts";
import { ZeroPageFinder } from "../host/memory/zero-pages.ts";
import { PageDeltaCodec } from "../host/protocol/page-delta.ts";
import { TransactionReceiver } from "../host/protocol/receiver.ts";
import { TransactionSender } from "../host/protocol/sender.ts";
import { connect, listen, type SocketTransport } from "../host/protocol/socket-transport.ts";
import { StreamReader } from "../host/protocol/stream/reader.ts";
import { StreamWriter } from "../host/protocol/stream/writer.ts";
import { seededRandom } from "../host/prng.ts";
import { bytesEqual } from "./support/flavors.ts";

const test = suite("checkpoints end to end: dirty log, stream, transactions over TCP, replica");

test("a guest's checkpoints rebuild it exactly on the far side", async () => {
  const pages = 300;
  const guest = new GuestMemory(new WebAssembly.Memory({ initial: 20 }), { size: pages * PAGE_SIZE });
  const log = new DetectingDirtyLog(guest);
  const zeros = new ZeroPageFinder(guest);
  const codec = new PageDeltaCodec();
  const random = seededRandom(101);

  // The far side: a replica of RAM, device state and a disk, changed only by whole checkpoints.
  const replica = new Uint8Array(guest.size);
  const disk = new Uint8Array(64 * 1024);
  let device = new Uint8Array(0);
  let checkpoints = 0;
  const reader = new StreamReader();
  let accepted!: (t: SocketTransport) => void;
  const serverSide = new Promise<SocketTransport>((resolve) => (accepted = resolve));
  const server = await listen({ port: 0 }, (t) => accepted(t));
  const client = await connect(server.address);
  const receiver = new TransactionReceiver(await serverSide, (txn) => {
    for (const record of reader.read(txn.bytes())) {
      if (record.type === "pages") {
        record.pfns.forEach((pfn, i) => replica.set(record.data.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE), pfn * PAGE_SIZE));
      } else if (record.type === "zero-pages") {
        for (const pfn of record.pfns) replica.fill(0, pfn * PAGE_SIZE, (pfn + 1) * PAGE_SIZE);
      } else if (record.type === "delta-pages") {
        for (const { pfn, delta } of record.pages) codec.apply(replica.subarray(pfn * PAGE_SIZE, (pfn + 1) * PAGE_SIZE), delta);
      } else if (record.type === "device-state") {
        device = record.data.slice();
      } else if (record.type === "disk-writes") {
        for (const w of record.writes) disk.set(w.data, w.offset);
      } else if (record.type === "checkpoint-end") {
        checkpoints = record.checkpoint;
      }
    }
  });
  const sender = new TransactionSender(client);
  receiver.open();
  await sender.open();

  // The near side: what the standby holds, for deltas.
  const sent = new Uint8Array(guest.size);
  const used = { full: 0, zero: 0, delta: 0 };
  const sourceDisk = new Uint8Array(disk.length);
  log.arm();
  const writer = new StreamWriter({ pageSize: PAGE_SIZE, regions: [{ size: guest.size }] });
  writer.writeHeader();
  for (let epoch = 1; epoch <= 6; epoch++) {
    const dirty = log.collect();
    const shadow = log.shadow();
    const zero = new Set(zeros.find(dirty));
    const full: number[] = [];
    const deltas: { pfn: number; delta: Uint8Array }[] = [];
    for (const pfn of dirty) {
      if (zero.has(pfn)) continue;
      const now = shadow.subarray(pfn * PAGE_SIZE, (pfn + 1) * PAGE_SIZE);
      const delta = epoch > 1 ? codec.encode(sent.subarray(pfn * PAGE_SIZE, (pfn + 1) * PAGE_SIZE), now) : undefined;
      if (delta) deltas.push({ pfn, delta });
      else full.push(pfn);
      sent.set(now, pfn * PAGE_SIZE);
    }
    for (const pfn of zero) sent.fill(0, pfn * PAGE_SIZE, (pfn + 1) * PAGE_SIZE);
    used.full += full.length;
    used.zero += zero.size;
    used.delta += deltas.length;
    writer.pages(0, full, (pfn) => shadow.subarray(pfn * PAGE_SIZE, (pfn + 1) * PAGE_SIZE));
    writer.zeroPages(0, [...zero]);
    writer.deltaPages(0, deltas);
    writer.deviceState(0, Uint8Array.of(epoch, epoch, epoch));
    const writes = [{ offset: Math.floor(random() * 60) * 1024, data: new Uint8Array(1024).fill(epoch) }];
    for (const w of writes) sourceDisk.set(w.data, w.offset);
    writer.diskWrites(0, writes);
    writer.checkpointEnd(epoch, 1);
    await sender.begin();
    await sender.write(writer.take());
    await sender.commit();
    assert.ok(bytesEqual(replica, shadow), `epoch ${epoch}: the replica equals the checkpointed RAM`);
    assert.ok(bytesEqual(disk, sourceDisk), `epoch ${epoch}: the disk too`);
    assert.equal(Array.from(device), [epoch, epoch, epoch]);
    assert.is(checkpoints, epoch);
    // The guest runs on: some pages change a little, some a lot, some become zero.
    const bytes = guest.bytes();
    for (let i = 0; i < 40; i++) bytes[Math.floor(random() * guest.size)] = Math.floor(random() * 256);
    bytes.fill(7, 10 * PAGE_SIZE, 12 * PAGE_SIZE);
    bytes.fill(0, (20 + epoch) * PAGE_SIZE, (21 + epoch) * PAGE_SIZE);
  }
  assert.ok(used.full > 0 && used.zero > 0 && used.delta > 0, `every page record kind was exercised: ${JSON.stringify(used)}`);
  sender.close();
  await receiver.done;
  await server.close();
});

test.run();
