import { suite } from "uvu";
import * as assert from "uvu/assert";
import * as fs from "node:fs";
import { ErrorCode } from "../host/errors.ts";
import { GuestMemory } from "../host/memory/guest-memory.ts";
import { seededRandom } from "../host/prng.ts";
import { EventChannels } from "../host/xen/event-channel.ts";
import { GRANT_ENTRY_V1_SIZE, GrantFlag, GrantStatus } from "../host/xen/grants/grant-entry.ts";
import { GrantTable, type GrantCopySegment } from "../host/xen/grants/grant-table.ts";
import { errorCode } from "./support/errors.ts";

const test = suite("grant tables (v1 entries in guest memory: map, copy, end access) and event channels");
const PAGE = 4096;
const GUEST = 5;
const BACKEND = 0;
const GRANT_TABLE_H = "/usr/include/xen/grant_table.h";
/** Lets microtasks (event delivery) run. */
const settle = () => new Promise((resolve) => setTimeout(resolve, 0));

/** A guest of `pages` pages whose every byte says which page it is in, and its grant table. */
function guest(pages = 8): { memory: Uint8Array; table: GrantTable } {
  const memory = new Uint8Array(pages * PAGE);
  for (let page = 0; page < pages; page++) memory.fill(page + 1, page * PAGE, (page + 1) * PAGE);
  return { memory, table: new GrantTable({ domid: GUEST, memory }) };
}

/** Writes a raw entry, as a hostile granter would. */
function rawEntry(table: GrantTable, ref: number, flags: number, domid: number, frame: number): void {
  const view = new DataView(table.entryBytes.buffer, table.entryBytes.byteOffset + ref * GRANT_ENTRY_V1_SIZE, GRANT_ENTRY_V1_SIZE);
  view.setUint16(0, flags, true);
  view.setUint16(2, domid, true);
  view.setUint32(4, frame, true);
}

function flagsOf(table: GrantTable, ref: number): number {
  return new DataView(table.entryBytes.buffer, table.entryBytes.byteOffset).getUint16(ref * GRANT_ENTRY_V1_SIZE, true);
}

// ---- grant tables ----

test("flag and status values equal Xen's grant_table.h", () => {
  if (!fs.existsSync(GRANT_TABLE_H)) {
    if (process.env.TANDEM_REQUIRE_XEN === "1") assert.unreachable(`${GRANT_TABLE_H} is missing but TANDEM_REQUIRE_XEN=1 (install libxen-dev)`);
    console.log(`  skip: grant_table.h values (no ${GRANT_TABLE_H}; install libxen-dev)`);
    return;
  }
  const header = fs.readFileSync(GRANT_TABLE_H, "utf8");
  const expressions = new Map([...header.matchAll(/^#define\s+(\w+)\s+(.+?)\s*(?:\/\*.*)?$/gm)].map((m) => [m[1], m[2]]));
  // Values there are "(1U<<_GTF_readonly)", "(2)", "(-10)": a number, optionally shifted by a number or another define.
  const define = (name: string, depth = 0): number => {
    const text = expressions.get(name);
    assert.ok(text !== undefined && depth < 4, `${name} in ${GRANT_TABLE_H}`);
    const match = /^\((-?[0-9]+)U?(?:<<\s*(\w+))?\)$/.exec(text!.replace(/\s+/g, ""));
    assert.ok(match, `${name} = ${text}`);
    const shift = match![2] === undefined ? 0 : /^[0-9]+$/.test(match![2]) ? Number(match![2]) : define(match![2], depth + 1);
    return Number(match![1]) << shift;
  };
  assert.is(define("GTF_permit_access"), GrantFlag.PermitAccess);
  assert.is(define("GTF_type_mask"), GrantFlag.TypeMask);
  assert.is(define("GTF_readonly"), GrantFlag.Readonly);
  assert.is(define("GTF_reading"), GrantFlag.Reading);
  assert.is(define("GTF_writing"), GrantFlag.Writing);
  assert.is(define("GTF_sub_page"), GrantFlag.SubPage);
  assert.is(define("GNTST_okay"), GrantStatus.Okay);
  assert.is(define("GNTST_general_error"), GrantStatus.GeneralError);
  assert.is(define("GNTST_bad_gntref"), GrantStatus.BadGntref);
  assert.is(define("GNTST_bad_page"), GrantStatus.BadPage);
  assert.is(define("GNTST_bad_copy_arg"), GrantStatus.BadCopyArg);
});

test("an entry in guest memory frames is {flags u16, domid u16, frame u32} little-endian; refs 0-7 are reserved", () => {
  const backing = new ArrayBuffer(0x200 * PAGE);
  const memory = new GuestMemory(backing);
  const table = new GrantTable({ domid: GUEST, memory, entries: { frame: 2, frames: 1 } });
  assert.is(table.size, PAGE / 8);
  const ref = table.grantAccess(BACKEND + 0x0102, 0x0103, true);
  assert.is(ref, 8, "the first free reference after the reserved ones");
  const at = 2 * PAGE + ref * 8;
  assert.equal(Array.from(new Uint8Array(backing, at, 8)), [1 | 4, 0, 0x02, 0x01, 0x03, 0x01, 0, 0]);
  assert.is(table.grantAccess(BACKEND, 3, false), 9);
  assert.is(errorCode(() => new GrantTable({ domid: GUEST, memory, entries: { frame: 0x1ff, frames: 2 } })), ErrorCode.OutOfRange);
  assert.is(errorCode(() => new GrantTable({ domid: GUEST, memory, entries: new Uint8Array(12) })), ErrorCode.BadArgument);
});

test("map and copy are allowed only to the domain granted; a read-only grant refuses every write", () => {
  const { memory, table } = guest();
  const rw = table.grantAccess(BACKEND, 3, false);
  const ro = table.grantAccess(BACKEND, 4, true);

  const mapping = table.map(BACKEND, rw, true);
  assert.is(mapping.bytes[0], 4, "frame 3 holds 4s");
  mapping.write(10, Uint8Array.of(0xee));
  assert.is(memory[3 * PAGE + 10], 0xee);
  mapping.unmap();

  assert.is(errorCode(() => table.map(7, rw, false)), ErrorCode.GrantDenied, "another domain");
  assert.is(errorCode(() => table.map(BACKEND, ro, true)), ErrorCode.GrantDenied, "writable map of a read-only grant");
  const readOnly = table.map(BACKEND, ro, false);
  assert.equal(Array.from(readOnly.read(0, 2)), [5, 5]);
  assert.is(errorCode(() => readOnly.write(0, Uint8Array.of(1))), ErrorCode.GrantDenied);
  assert.is(memory[4 * PAGE], 5, "the read-only page is unchanged");
  readOnly.unmap();
  assert.is(errorCode(() => readOnly.read(0, 1)), ErrorCode.InvalidState, "an unmapped mapping cannot be used");

  const buffer = new Uint8Array(16).fill(9);
  assert.equal(table.copy(7, [{ direction: "from-grant", ref: rw, offset: 0, length: 4, buffer }]), [GrantStatus.GeneralError]);
  assert.equal(table.copy(BACKEND, [{ direction: "to-grant", ref: ro, offset: 0, length: 4, buffer }]), [GrantStatus.GeneralError]);
  assert.is(memory[4 * PAGE], 5);
  assert.equal(table.copy(BACKEND, [{ direction: "from-grant", ref: ro, offset: 100, length: 4, buffer }]), [GrantStatus.Okay]);
  assert.equal(Array.from(buffer.subarray(0, 5)), [5, 5, 5, 5, 9]);
});

test("references outside the table, and ranges past the page or the buffer, are refused with codes and statuses", () => {
  const { memory, table } = guest();
  const ref = table.grantAccess(BACKEND, 2, false);
  for (const bad of [table.size, -1, 1.5, 2 ** 32, Number.NaN]) {
    assert.is(errorCode(() => table.map(BACKEND, bad, false)), ErrorCode.GrantRef, String(bad));
    assert.equal(table.copy(BACKEND, [{ direction: "from-grant", ref: bad, offset: 0, length: 1, buffer: new Uint8Array(1) }]), [GrantStatus.BadGntref]);
  }
  const before = memory.slice();
  const buffer = new Uint8Array(PAGE + 8).fill(0xaa);
  const past: GrantCopySegment[] = [
    { direction: "to-grant", ref, offset: 4000, length: 97, buffer },
    { direction: "to-grant", ref, offset: 0, length: PAGE + 1, buffer },
    { direction: "to-grant", ref, offset: -1, length: 2, buffer },
    { direction: "to-grant", ref, offset: 0, length: 16, buffer, bufferOffset: buffer.length - 8 },
    { direction: "to-grant", ref, offset: 0.5, length: 1, buffer },
  ];
  assert.equal(table.copy(BACKEND, past), past.map(() => GrantStatus.BadCopyArg));
  assert.equal(memory, before, "nothing was written");
  assert.equal(table.copy(BACKEND, [{ direction: "to-grant", ref, offset: 4000, length: 96, buffer }]), [GrantStatus.Okay], "up to the page's end");
  assert.is(memory[3 * PAGE], 4, "the next frame is untouched");
  const mapping = table.map(BACKEND, ref, true);
  assert.is(errorCode(() => mapping.read(4095, 2)), ErrorCode.OutOfRange);
  assert.is(errorCode(() => mapping.write(4090, new Uint8Array(7))), ErrorCode.OutOfRange);
});

test("ending a grant while it is mapped is refused; GTF_reading and GTF_writing follow the pins", () => {
  const { table } = guest();
  const ref = table.grantAccess(BACKEND, 1, false);
  const reader = table.map(BACKEND, ref, false);
  assert.is(flagsOf(table, ref), GrantFlag.PermitAccess | GrantFlag.Reading);
  const writer = table.map(BACKEND, ref, true);
  assert.is(flagsOf(table, ref), GrantFlag.PermitAccess | GrantFlag.Reading | GrantFlag.Writing);
  assert.is(table.pins(ref), 2);
  assert.is(errorCode(() => table.endAccess(ref)), ErrorCode.GrantInUse);
  writer.unmap();
  assert.is(flagsOf(table, ref), GrantFlag.PermitAccess | GrantFlag.Reading, "writing clears with the last writable pin");
  assert.is(errorCode(() => table.endAccess(ref)), ErrorCode.GrantInUse);
  reader.unmap();
  reader.unmap();
  assert.is(flagsOf(table, ref), GrantFlag.PermitAccess);
  table.endAccess(ref);
  assert.is(flagsOf(table, ref), 0);
  assert.is(errorCode(() => table.map(BACKEND, ref, false)), ErrorCode.GrantDenied, "an ended grant grants nothing");
  assert.is(errorCode(() => table.endAccess(ref)), ErrorCode.GrantRef, "ended twice");
  assert.is(errorCode(() => table.endAccess(3)), ErrorCode.GrantRef, "a reserved reference");
  assert.is(table.grantAccess(BACKEND, 2, true), ref, "the freed reference is reused");
});

test("a full table refuses new grants; a granted frame must be inside the guest", () => {
  const memory = new Uint8Array(2 * PAGE);
  const table = new GrantTable({ domid: GUEST, memory, entries: new Uint8Array(12 * 8) });
  for (let i = 0; i < 4; i++) table.grantAccess(BACKEND, 1, false);
  assert.is(errorCode(() => table.grantAccess(BACKEND, 1, false)), ErrorCode.GrantInUse);
  assert.is(errorCode(() => new GrantTable({ domid: GUEST, memory }).grantAccess(BACKEND, 2, false)), ErrorCode.OutOfRange);
});

test("batch copy: each segment checked on its own, statuses per segment, only good segments copied", () => {
  const { memory, table } = guest();
  const a = table.grantAccess(BACKEND, 1, false);
  const b = table.grantAccess(BACKEND, 2, true);
  const foreign = table.grantAccess(9, 3, false);
  rawEntry(table, 20, GrantFlag.PermitAccess, BACKEND, 1000);
  const out = new Uint8Array(64);
  const data = Uint8Array.from({ length: 32 }, (_, i) => 100 + i);
  const statuses = table.copy(BACKEND, [
    { direction: "from-grant", ref: a, offset: 8, length: 8, buffer: out },
    { direction: "to-grant", ref: a, offset: 4088, length: 8, buffer: data },
    { direction: "to-grant", ref: b, offset: 0, length: 8, buffer: data },
    { direction: "from-grant", ref: foreign, offset: 0, length: 8, buffer: out, bufferOffset: 8 },
    { direction: "from-grant", ref: 20, offset: 0, length: 8, buffer: out, bufferOffset: 16 },
    { direction: "from-grant", ref: table.size + 3, offset: 0, length: 8, buffer: out, bufferOffset: 24 },
    { direction: "from-grant", ref: b, offset: 0, length: 8, buffer: out, bufferOffset: 32 },
    { direction: "to-grant", ref: a, offset: 4090, length: 8, buffer: data },
  ]);
  assert.equal(statuses, [
    GrantStatus.Okay, GrantStatus.Okay, GrantStatus.GeneralError, GrantStatus.GeneralError,
    GrantStatus.BadPage, GrantStatus.BadGntref, GrantStatus.Okay, GrantStatus.BadCopyArg,
  ]);
  assert.equal(Array.from(out.subarray(0, 8)), new Array(8).fill(2));
  assert.equal(Array.from(out.subarray(8, 32)), new Array(24).fill(0), "refused segments copied nothing");
  assert.equal(Array.from(out.subarray(32, 40)), new Array(8).fill(3));
  assert.equal(Array.from(memory.subarray(PAGE + 4088, 2 * PAGE)), Array.from(data.subarray(0, 8)));
  assert.is(memory[2 * PAGE], 3, "the read-only frame is unchanged");
});

test("hostile entries (random flags, domids, frames) give the status an independent check predicts and touch only the granted frame", () => {
  const random = seededRandom(7);
  const pages = 8;
  const { memory, table } = guest(pages);
  const types = [GrantFlag.Invalid, GrantFlag.PermitAccess, GrantFlag.AcceptTransfer, GrantFlag.Transitive];
  for (let trial = 0; trial < 400; trial++) {
    const ref = 8 + Math.floor(random() * 64);
    const flags = (types[Math.floor(random() * 4)] | (random() < 0.3 ? GrantFlag.Readonly : 0) | (random() < 0.1 ? GrantFlag.SubPage : 0) | (random() < 0.2 ? GrantFlag.Reading | GrantFlag.Writing : 0)) & 0xffff;
    const domid = random() < 0.7 ? BACKEND : Math.floor(random() * 0x10000);
    const frame = random() < 0.7 ? Math.floor(random() * pages) : Math.floor(random() * 2 ** 32);
    rawEntry(table, ref, flags, domid, frame);
    const toGrant = random() < 0.5;
    const offset = Math.floor(random() * PAGE);
    const length = Math.floor(random() * 64);
    const buffer = new Uint8Array(64).fill(0xcc);
    const before = memory.slice();
    const [status] = table.copy(BACKEND, [{ direction: toGrant ? "to-grant" : "from-grant", ref, offset, length, buffer }]);
    const expected =
      offset + length > PAGE ? GrantStatus.BadCopyArg
      : (flags & 3) !== GrantFlag.PermitAccess || (flags & GrantFlag.SubPage) !== 0 || domid !== BACKEND || (toGrant && (flags & GrantFlag.Readonly) !== 0) ? GrantStatus.GeneralError
      : frame >= pages ? GrantStatus.BadPage
      : GrantStatus.Okay;
    assert.is(status, expected, `trial ${trial}: flags ${flags} domid ${domid} frame ${frame} ${offset}+${length}`);
    for (let page = 0; page < pages; page++) {
      if (status === GrantStatus.Okay && toGrant && page === frame) continue;
      assert.ok(memory.subarray(page * PAGE, (page + 1) * PAGE).every((byte, i) => byte === before[page * PAGE + i]), `trial ${trial}: page ${page} untouched`);
    }
    const code = errorCode(() => table.map(BACKEND, ref, toGrant).unmap());
    assert.ok(code === undefined || code === ErrorCode.GrantDenied, `trial ${trial}: map gives a coded error, got ${code}`);
  }
});

test("a granter that rewrites a mapped entry cannot move the mapping to another frame", () => {
  const { table } = guest();
  const ref = table.grantAccess(BACKEND, 2, false);
  const mapping = table.map(BACKEND, ref, true);
  rawEntry(table, ref, GrantFlag.PermitAccess | GrantFlag.Reading | GrantFlag.Writing, BACKEND, 6);
  assert.is(mapping.bytes[0], 3, "still frame 2");
  const out = new Uint8Array(1);
  assert.equal(table.copy(BACKEND, [{ direction: "from-grant", ref, offset: 0, length: 1, buffer: out }]), [GrantStatus.Okay]);
  assert.is(out[0], 3, "a copy while mapped uses the pinned frame too, as Xen's active entry does");
  mapping.unmap();
  assert.is(flagsOf(table, ref), GrantFlag.PermitAccess);
});

// ---- event channels ----

test("event channels: notify runs the other end's handler on a microtask, coalescing notifications while pending", async () => {
  const channels = new EventChannels();
  const backendPort = channels.allocUnbound(BACKEND, GUEST);
  assert.is(channels.state(BACKEND, backendPort), "unbound");
  const guestPort = channels.bindInterdomain(GUEST, BACKEND, backendPort);
  assert.equal(channels.peer(GUEST, guestPort), { domid: BACKEND, port: backendPort });
  assert.equal(channels.peer(BACKEND, backendPort), { domid: GUEST, port: guestPort });
  const seen: number[] = [];
  channels.onEvent(BACKEND, backendPort, (port) => {
    seen.push(port);
    if (seen.length === 1) channels.notify(GUEST, guestPort);
  });
  channels.notify(GUEST, guestPort);
  channels.notify(GUEST, guestPort);
  channels.notify(GUEST, guestPort);
  assert.equal(seen, [], "not synchronously");
  await settle();
  assert.equal(seen, [backendPort, backendPort], "three coalesced into one, then one sent from inside the handler");
  const back: number[] = [];
  channels.notify(BACKEND, backendPort);
  await settle();
  channels.onEvent(GUEST, guestPort, (port) => back.push(port));
  await settle();
  assert.equal(back, [guestPort], "an event that came before the handler is delivered when it is set");
});

test("event channels: close unbinds the peer, drops pending events; bad ports and binds are E_EVTCHN_PORT", async () => {
  const errors: unknown[] = [];
  const channels = new EventChannels({ maxPorts: 4, onHandlerError: (error) => errors.push(error) });
  const port = channels.allocUnbound(BACKEND, GUEST);
  assert.is(errorCode(() => channels.bindInterdomain(7, BACKEND, port)), ErrorCode.EvtchnPort, "allocated for another domain");
  assert.is(errorCode(() => channels.bindInterdomain(GUEST, BACKEND, port + 1)), ErrorCode.EvtchnPort, "no such port");
  const guestPort = channels.bindInterdomain(GUEST, BACKEND, port);
  assert.is(errorCode(() => channels.bindInterdomain(GUEST, BACKEND, port)), ErrorCode.EvtchnPort, "already bound");
  let calls = 0;
  channels.onEvent(BACKEND, port, () => calls++);
  channels.notify(GUEST, guestPort);
  channels.close(GUEST, guestPort);
  assert.is(channels.state(BACKEND, port), "unbound", "the peer waits for a new guest port");
  assert.is(channels.state(GUEST, guestPort), "free");
  channels.notify(BACKEND, port);
  assert.is(errorCode(() => channels.notify(GUEST, guestPort)), ErrorCode.EvtchnPort);
  await settle();
  assert.is(calls, 1, "the event sent before the close was pending at the backend and is delivered");
  const again = channels.bindInterdomain(GUEST, BACKEND, port);
  channels.notify(GUEST, again);
  channels.close(BACKEND, port);
  await settle();
  assert.is(calls, 1, "a pending event of a closed port is dropped");
  channels.allocUnbound(BACKEND, GUEST);
  channels.allocUnbound(BACKEND, GUEST);
  channels.allocUnbound(BACKEND, GUEST);
  assert.is(errorCode(() => channels.allocUnbound(BACKEND, GUEST)), ErrorCode.EvtchnPort, "ports 1..3 in use");

  const fresh = new EventChannels({ onHandlerError: (error) => errors.push(error) });
  const a = fresh.allocUnbound(GUEST, BACKEND);
  const b = fresh.bindInterdomain(BACKEND, GUEST, a);
  fresh.onEvent(GUEST, a, () => {
    throw new Error("handler bug");
  });
  fresh.notify(BACKEND, b);
  await settle();
  assert.is(errors.length, 1, "a throwing handler is reported, not thrown into the runtime");
});

test.run();
