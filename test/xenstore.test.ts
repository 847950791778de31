import { suite } from "uvu";
import * as assert from "uvu/assert";
import * as fs from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ErrorCode } from "../host/errors.ts";
import { seededRandom } from "../host/prng.ts";
import { XenStoreClient } from "../host/xen/xenstore/client.ts";
import { directoryPart, handleRequest } from "../host/xen/xenstore/requests.ts";
import { serveXenStore, type XenStoreServer } from "../host/xen/xenstore/server.ts";
import { XenStore } from "../host/xen/xenstore/store.ts";
import {
  HEADER_SIZE, XENSTORE_PAYLOAD_MAX, XsDecoder, XsType, encodeMessage, nulTerminated, splitPayload, textToBytes, type XsDecoded, type XsMessage,
} from "../host/xen/xenstore/wire.ts";
import { XenStoreError } from "../host/xen/xenstore/xs-error.ts";
import { concat } from "./support/bytes.ts";
import { errorCode } from "./support/errors.ts";
import { until } from "./support/session.ts";

const test = suite("xenstore: tree, permissions, transactions, watches, limits, xs_wire and the socket server");
const dir = fs.mkdtempSync(join(tmpdir(), "tandem-xenstore-"));
const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
/** Lets queued watch events through. */
const settle = () => new Promise((resolve) => setTimeout(resolve, 0));

/** The xenstore errno `fn` throws, or undefined. */
function errnoOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (error) {
    return error instanceof XenStoreError ? error.errno : `not a XenStoreError: ${String(error)}`;
  }
  return undefined;
}

async function rejectedErrno(promise: Promise<unknown>): Promise<string | undefined> {
  try {
    await promise;
  } catch (error) {
    return error instanceof XenStoreError ? error.errno : `not a XenStoreError: ${String(error)}`;
  }
  return undefined;
}

/** A store where dom0 gave domain 5 its home, /local/domain/5, owned by 5 and closed to others. */
function storeWithGuest(limits: ConstructorParameters<typeof XenStore>[0] = {}): XenStore {
  const store = new XenStore(limits);
  store.mkdir(0, "/local/domain/5");
  store.setPerms(0, "/local/domain/5", [{ domid: 5, access: "n" }]);
  return store;
}

// ---- the tree ----

test("write creates missing parents with empty values; read, directory in creation order, mkdir keeps values", () => {
  const store = new XenStore();
  store.write(0, "/a/b/c", "hello");
  assert.is(store.readString(0, "/a/b/c"), "hello");
  assert.is(store.read(0, "/a").length, 0, "a created parent has an empty value");
  assert.is(store.read(0, "/a/b").length, 0);
  store.write(0, "/a/b/zeta", "1");
  store.write(0, "/a/b/alpha", "2");
  store.write(0, "/a/b/c", "again");
  assert.equal(store.directory(0, "/a/b"), ["c", "zeta", "alpha"], "creation order, as C xenstored keeps children");
  store.mkdir(0, "/a/b/c");
  assert.is(store.readString(0, "/a/b/c"), "again", "mkdir of an existing node keeps its value");
  store.mkdir(0, "/m/n");
  assert.equal(store.directory(0, "/m/n"), []);
  assert.equal(store.directory(0, "/"), ["a", "m"]);
  const binary = new Uint8Array([0, 1, 2, 255, 0]);
  store.write(0, "/bin", binary);
  assert.equal([...store.read(0, "/bin")], [...binary], "values are bytes, NULs included");
  assert.is(store.nodeCount, 9, "/, a, b, c, zeta, alpha, m, n and bin");
});

test("rm removes the whole subtree; a missing node is fine if its parent exists; the root cannot go", () => {
  const store = new XenStore();
  store.write(0, "/a/b/c/d", "x");
  store.write(0, "/a/keep", "y");
  const before = store.nodeCount;
  store.rm(0, "/a/b");
  assert.is(errnoOf(() => store.read(0, "/a/b/c/d")), "ENOENT");
  assert.is(errnoOf(() => store.read(0, "/a/b")), "ENOENT");
  assert.equal(store.directory(0, "/a"), ["keep"]);
  assert.is(store.nodeCount, before - 3, "the three removed nodes are no longer counted");
  store.rm(0, "/a/b");
  assert.is(errnoOf(() => store.rm(0, "/a/b/c")), "ENOENT", "neither the node nor its parent exists");
  assert.is(errnoOf(() => store.rm(0, "/")), "EINVAL");
  assert.is(errorCode(() => store.read(0, "/nowhere")), ErrorCode.XsNotFound);
});

test("paths: relative ones are under /local/domain/<domid>; bad ones are EINVAL", () => {
  const store = storeWithGuest();
  store.as(5).write("device/vbd/51712/state", "1");
  assert.is(store.readString(0, "/local/domain/5/device/vbd/51712/state"), "1");
  assert.is(store.as(5).readString("device/vbd/51712/state"), "1");
  assert.is(store.as(0).getDomainPath(7), "/local/domain/7");
  for (const bad of ["", "/a//b", "/a/", "/a b", "/a/ü", "@special", "/a/\u0000", `/${"x".repeat(3072)}`, "/a".repeat(129)]) {
    assert.is(errnoOf(() => store.write(0, bad, "v")), "EINVAL", JSON.stringify(bad.slice(0, 20)));
  }
  assert.is(errorCode(() => store.read(0, "a//b")), ErrorCode.XsInvalid);
  store.write(0, `/${"y".repeat(3071)}`, "longest path");
  assert.is(store.readString(0, `/${"y".repeat(3071)}`), "longest path");
});

// ---- permissions ----

test("permissions: a domU cannot read an n0 node, can with r<domid>, and cannot write with only r", () => {
  const store = storeWithGuest();
  store.write(0, "/local/domain/5/backend-only", "secret");
  store.setPerms(0, "/local/domain/5/backend-only", [{ domid: 0, access: "n" }]);
  assert.is(errnoOf(() => store.read(5, "/local/domain/5/backend-only")), "EACCES");
  assert.is(errorCode(() => store.read(5, "/local/domain/5/backend-only")), ErrorCode.XsPermission);
  store.setPerms(0, "/local/domain/5/backend-only", [{ domid: 0, access: "n" }, { domid: 5, access: "r" }]);
  assert.is(store.readString(5, "/local/domain/5/backend-only"), "secret");
  assert.is(errnoOf(() => store.write(5, "/local/domain/5/backend-only", "mine")), "EACCES");
  assert.is(errnoOf(() => store.read(6, "/local/domain/5/backend-only")), "EACCES", "domain 6 falls back to n");
  assert.is(errnoOf(() => store.write(5, "/local/domain/6/x", "y")), "EACCES", "the nearest existing ancestor (/local/domain, n0) refuses");
  assert.is(errnoOf(() => store.read(6, "/local/domain/5/nothing")), "EACCES", "a missing node under an unreadable parent is EACCES, not ENOENT");
  assert.is(errnoOf(() => store.read(5, "/local/domain/5/nothing")), "ENOENT");
});

test("permissions: a domain owns what it creates, only the owner sets perms, only dom0 changes owners", () => {
  const store = storeWithGuest();
  store.write(5, "/local/domain/5/data/x", "1");
  assert.equal(store.getPerms(5, "/local/domain/5/data/x"), [{ domid: 5, access: "n" }]);
  store.write(0, "/local/domain/5/made-by-dom0", "");
  assert.equal(store.getPerms(0, "/local/domain/5/made-by-dom0"), [{ domid: 5, access: "n" }], "dom0's nodes inherit the parent's perms");
  store.setPerms(5, "/local/domain/5/data/x", [{ domid: 5, access: "r" }, { domid: 7, access: "b" }]);
  assert.equal(store.getPerms(0, "/local/domain/5/data/x"), [{ domid: 5, access: "r" }, { domid: 7, access: "b" }]);
  store.write(7, "/local/domain/5/data/x", "from 7");
  assert.is(errnoOf(() => store.setPerms(7, "/local/domain/5/data/x", [{ domid: 7, access: "b" }])), "EACCES", "7 may write but does not own it");
  assert.is(errnoOf(() => store.setPerms(5, "/local/domain/5/data/x", [{ domid: 6, access: "n" }])), "EPERM", "a domU cannot give a node away");
  store.setPerms(0, "/local/domain/5/data/x", [{ domid: 6, access: "n" }]);
  assert.is(errnoOf(() => store.read(5, "/local/domain/5/data/x")), "EACCES", "5 no longer owns it");
  assert.is(store.nodesOwnedBy(6), 1);
  assert.is(errnoOf(() => store.setPerms(0, "/local/domain/5/data/x", [])), "EINVAL");
});

// ---- transactions ----

test("transactions: a conflicting commit answers EAGAIN and the caller's retry succeeds", () => {
  const store = new XenStore();
  store.write(0, "/t/counter", "0");
  const increment = (meddle: boolean): number => {
    for (let attempt = 1; attempt <= 5; attempt++) {
      const tx = store.transactionStart(0);
      const value = Number(store.readString(0, "/t/counter", tx));
      if (meddle && attempt === 1) store.as(0).write("/t/counter", "100"); // another writer gets in between
      store.write(0, "/t/counter", String(value + 1), tx);
      try {
        store.transactionEnd(0, tx, true);
        return attempt;
      } catch (error) {
        assert.is((error as XenStoreError).errno, "EAGAIN");
        assert.is((error as XenStoreError).code, ErrorCode.XsConflict);
      }
    }
    throw new Error("no attempt committed");
  };
  assert.is(increment(false), 1);
  assert.is(store.readString(0, "/t/counter"), "1");
  assert.is(increment(true), 2, "the first attempt conflicted, the retry went through");
  assert.is(store.readString(0, "/t/counter"), "101", "the retry read the other writer's value");
});

test("transactions: reads see the snapshot, abort discards, commits of unrelated nodes go through", () => {
  const store = new XenStore();
  store.write(0, "/s/a", "old");
  const tx = store.transactionStart(0);
  store.write(0, "/s/a", "outside");
  store.write(0, "/s/new", "outside");
  assert.is(store.readString(0, "/s/a", tx), "old", "the transaction sees the store as it began");
  assert.is(errnoOf(() => store.read(0, "/s/new", tx)), "ENOENT");
  store.write(0, "/s/mine", "inside", tx);
  assert.is(store.readString(0, "/s/mine", tx), "inside", "its own writes");
  assert.is(errnoOf(() => store.read(0, "/s/mine")), "ENOENT", "not visible outside before the commit");
  store.transactionEnd(0, tx, false);
  assert.is(errnoOf(() => store.read(0, "/s/mine")), "ENOENT", "aborted");
  assert.is(errnoOf(() => store.transactionEnd(0, tx, true)), "ENOENT", "the transaction is over");

  store.mkdir(0, "/p");
  store.mkdir(0, "/q");
  const a = store.transactionStart(0);
  store.write(0, "/p/x/value", "1", a);
  store.write(0, "/q/other", "elsewhere");
  store.transactionEnd(0, a, true);
  assert.is(store.readString(0, "/p/x/value"), "1", "a change elsewhere does not conflict");

  // Two transactions adding children to one parent: the parent's child list is the conflict.
  const first = store.transactionStart(0);
  const second = store.transactionStart(0);
  store.write(0, "/p/x/one", "1", first);
  store.write(0, "/p/x/two", "2", second);
  store.transactionEnd(0, first, true);
  assert.is(errnoOf(() => store.transactionEnd(0, second, true)), "EAGAIN");
  assert.equal(store.directory(0, "/p/x"), ["value", "one"]);
  assert.is(errnoOf(() => store.read(0, "/p", 12345)), "ENOENT", "an unknown transaction id");
});

test("transactions: a commit that removed and rewrote nodes replays onto the store; limits per connection", () => {
  const store = new XenStore();
  store.write(0, "/r/a/b", "1");
  const tx = store.transactionStart(0);
  store.rm(0, "/r/a", tx);
  store.write(0, "/r/a/c", "2", tx);
  store.setPerms(0, "/r/a/c", [{ domid: 0, access: "r" }], tx);
  assert.equal(store.directory(0, "/r/a", tx), ["c"]);
  store.transactionEnd(0, tx, true);
  assert.equal(store.directory(0, "/r/a"), ["c"]);
  assert.equal(store.getPerms(0, "/r/a/c"), [{ domid: 0, access: "r" }]);
  const small = new XenStore({ limits: { maxTransactionsPerConnection: 2 } });
  small.transactionStart(0);
  const t2 = small.transactionStart(0);
  assert.is(errnoOf(() => small.transactionStart(0)), "ENOSPC");
  small.transactionEnd(0, t2, false);
  small.transactionStart(0);
  assert.ok(small.connect(0).transactionStart() > 0, "another connection has its own allowance");
});

// ---- watches ----

test("watches: once on registration, on the path and below, not beside it, the watched path on an ancestor's rm, none after unwatch", async () => {
  const store = new XenStore();
  const events: string[] = [];
  store.watch(0, "/w/dev", "tok", (path, token) => events.push(`${path} ${token}`));
  assert.equal(events, [], "events come after the call returns");
  await settle();
  assert.equal(events, ["/w/dev tok"], "fires once on registration");
  store.write(0, "/w/dev", "1");
  store.write(0, "/w/dev/state", "4");
  store.write(0, "/w/devices", "not below /w/dev");
  store.write(0, "/w/other", "x");
  store.mkdir(0, "/w/dev/state");
  await settle();
  assert.equal(events.slice(1), ["/w/dev tok", "/w/dev/state tok"]);
  store.rm(0, "/w");
  await settle();
  assert.equal(events.slice(3), ["/w/dev tok"], "an ancestor removed: the watched path");
  assert.is(errnoOf(() => store.watch(0, "/w/dev", "tok", () => {})), "EEXIST");
  store.unwatch(0, "/w/dev", "tok");
  assert.is(errnoOf(() => store.unwatch(0, "/w/dev", "tok")), "ENOENT");
  store.write(0, "/w/dev/state", "5");
  await settle();
  assert.is(events.length, 4, "nothing after unwatch");
});

test("watches: tokens tell watches apart, relative watches hear relative paths, transactions fire on commit only", async () => {
  const store = storeWithGuest();
  const events: string[] = [];
  const guest = store.connect(5);
  guest.watch("device", "rel", (path, token) => events.push(`${token}:${path}`));
  guest.watch("/local/domain/5/device", "abs", (path, token) => events.push(`${token}:${path}`));
  await settle();
  store.write(0, "/local/domain/5/device/vbd/1/state", "1");
  await settle();
  assert.equal(events, ["rel:device", "abs:/local/domain/5/device", "rel:device/vbd/1/state", "abs:/local/domain/5/device/vbd/1/state"]);
  const tx = store.transactionStart(0);
  store.write(0, "/local/domain/5/device/a", "1", tx);
  store.write(0, "/local/domain/5/device/b", "2", tx);
  await settle();
  assert.is(events.length, 4, "no events before the commit");
  store.transactionEnd(0, tx, true);
  await settle();
  assert.equal(events.slice(4), ["rel:device/a", "abs:/local/domain/5/device/a", "rel:device/b", "abs:/local/domain/5/device/b"]);
  guest.close();
  store.write(0, "/local/domain/5/device/c", "3");
  await settle();
  assert.is(events.length, 8, "a closed connection's watches are gone");
});

test("watches: a domain hears only of nodes it can read; special paths; the per-connection limit", async () => {
  const store = storeWithGuest({ limits: { maxWatchesPerConnection: 3 } });
  const guest: string[] = [];
  const dom0: string[] = [];
  store.watch(5, "/local/domain/5", "g", (path) => guest.push(path));
  store.watch(0, "@introduceDomain", "i", (path) => dom0.push(path));
  store.watch(0, "@releaseDomain", "r", (path) => dom0.push(path));
  await settle();
  store.write(0, "/local/domain/5/hidden", "x");
  store.setPerms(0, "/local/domain/5/hidden", [{ domid: 0, access: "n" }]);
  store.write(0, "/local/domain/5/hidden", "y");
  store.write(0, "/local/domain/5/visible", "z");
  store.as(0).introduceDomain(5);
  store.as(0).releaseDomain(5);
  await settle();
  assert.equal(guest, ["/local/domain/5", "/local/domain/5/hidden", "/local/domain/5/visible"], "the second write to hidden was n0 for 5");
  assert.equal(dom0, ["@introduceDomain", "@releaseDomain", "@introduceDomain", "@releaseDomain"]);
  assert.ok(store.as(0).isDomainIntroduced(0));
  assert.not.ok(store.as(0).isDomainIntroduced(5));
  assert.is(errnoOf(() => store.as(5).introduceDomain(6)), "EACCES");
  assert.is(errnoOf(() => store.as(0).releaseDomain(9)), "ENOENT");
  store.watch(0, "/x", "3", () => {});
  assert.is(errnoOf(() => store.watch(0, "/y", "4", () => {})), "E2BIG");
  assert.is(errnoOf(() => store.watch(0, "/y", "t\0", () => {})), "EINVAL");
});

// ---- limits ----

test("limits: values over 4096 bytes are E2BIG, a domU's over its quota ENOSPC; nodes per domain", () => {
  const store = storeWithGuest({ limits: { maxNodesPerDomain: 6 } });
  assert.is(errnoOf(() => store.write(0, "/big", new Uint8Array(XENSTORE_PAYLOAD_MAX + 1))), "E2BIG");
  assert.is(errorCode(() => store.write(0, "/big", new Uint8Array(XENSTORE_PAYLOAD_MAX + 1))), ErrorCode.XsLimit);
  store.write(0, "/big", new Uint8Array(XENSTORE_PAYLOAD_MAX));
  assert.is(errnoOf(() => store.write(5, "/local/domain/5/v", new Uint8Array(2049))), "ENOSPC");
  store.write(5, "/local/domain/5/v", new Uint8Array(2048));
  // Domain 5 owns its home and v: 2 of 6.
  store.write(5, "/local/domain/5/a/b/c", "");
  assert.is(store.nodesOwnedBy(5), 5);
  assert.is(errnoOf(() => store.write(5, "/local/domain/5/x/y", "")), "ENOSPC", "two more would be 7");
  store.write(5, "/local/domain/5/x", "");
  assert.is(errnoOf(() => store.mkdir(5, "/local/domain/5/z")), "ENOSPC");
  store.rm(5, "/local/domain/5/a");
  store.write(5, "/local/domain/5/z", "room again");
  for (let i = 0; i < 20; i++) store.write(0, `/local/domain/5/dom0-${i}`, "");
  assert.is(store.nodesOwnedBy(5), 24, "dom0 is not held to quotas, even creating nodes that 5 owns");
  const six = [5, 1, 2, 3, 4, 6].map((domid) => ({ domid, access: "r" as const }));
  assert.is(errnoOf(() => store.setPerms(5, "/local/domain/5/z", six)), "ENOSPC", "more than 5 permissions");
  store.setPerms(5, "/local/domain/5/z", six.slice(0, 5));
  assert.is(errnoOf(() => store.setPerms(0, "/big", [{ domid: 70000, access: "r" }])), "EINVAL");
});

// ---- the wire ----

function message(type: number, reqId: number, txId: number, payload: string | Uint8Array): XsMessage {
  return { type, reqId, txId, payload: typeof payload === "string" ? textToBytes(payload) : payload };
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

function drain(decoder: XsDecoder): XsDecoded[] {
  const out: XsDecoded[] = [];
  for (let d = decoder.next(); d !== undefined; d = decoder.next()) out.push(d);
  return out;
}

test("wire: the header is four little-endian u32s; payloads over 4096 are refused", () => {
  const bytes = encodeMessage(message(XsType.Write, 0x01020304, 7, "/a\0v"));
  assert.equal([...bytes.subarray(0, HEADER_SIZE)], [11, 0, 0, 0, 4, 3, 2, 1, 7, 0, 0, 0, 4, 0, 0, 0]);
  assert.is(text(bytes.subarray(HEADER_SIZE)), "/a\0v");
  assert.is(errorCode(() => encodeMessage(message(XsType.Write, 1, 0, new Uint8Array(4097)))), ErrorCode.XsProtocol);
  encodeMessage(message(XsType.Write, 1, 0, new Uint8Array(4096)));
  assert.equal(splitPayload(textToBytes("a\0bc\0d")), { strings: ["a", "bc"], rest: textToBytes("d") });
  assert.equal([...nulTerminated(["x", ""])], [120, 0, 0]);
});

test("wire: the decoder gives the same messages however the stream is cut, at every byte boundary", () => {
  const random = seededRandom(7);
  const messages = [
    message(XsType.Read, 1, 0, "/a/b\0"),
    message(XsType.Directory, 2, 9, ""),
    message(XsType.Write, 3, 0, concat([textToBytes("/v\0"), Uint8Array.from({ length: 4093 }, () => Math.floor(random() * 256))])),
    message(XsType.Watch, 0xffffffff, 0xfffffffe, "/w\0token\0"),
  ];
  const stream = concat(messages.map(encodeMessage));
  const expected = messages.map((m) => ({ message: m }));
  for (let cut = 0; cut <= stream.length; cut++) {
    const decoder = new XsDecoder();
    decoder.push(stream.subarray(0, cut));
    const got = drain(decoder);
    decoder.push(stream.subarray(cut));
    got.push(...drain(decoder));
    // Re-encoding what came out must give back the stream exactly: same messages, same bytes.
    const again = concat(got.map((d) => ("message" in d ? encodeMessage(d.message) : new Uint8Array(0))));
    if (got.length !== messages.length || !sameBytes(again, stream)) assert.unreachable(`cut at ${cut}: ${got.length} messages`);
    assert.is(decoder.pendingBytes, 0);
  }
  const decoder = new XsDecoder();
  decoder.push(stream);
  assert.equal(drain(decoder), expected);
  const bytewise = new XsDecoder();
  const got: XsDecoded[] = [];
  for (let i = 0; i < stream.length; i++) {
    bytewise.push(stream.subarray(i, i + 1));
    got.push(...drain(bytewise));
  }
  assert.equal(got, expected, "one byte at a time");
});

test("wire: hostile headers: a length over 4096 stops the decoder, before any payload is awaited", () => {
  for (const len of [4097, 0x10000, 0x7fffffff, 0xffffffff]) {
    const header = new Uint8Array(HEADER_SIZE);
    const view = new DataView(header.buffer);
    view.setUint32(0, XsType.Read, true);
    view.setUint32(4, 42, true);
    view.setUint32(8, 3, true);
    view.setUint32(12, len, true);
    const decoder = new XsDecoder();
    decoder.push(header);
    assert.equal(decoder.next(), { oversized: { type: XsType.Read, reqId: 42, txId: 3, len } });
    decoder.push(encodeMessage(message(XsType.Read, 1, 0, "/a\0")));
    assert.is(decoder.next(), undefined, "nothing after it");
    assert.is(decoder.pendingBytes, 0, "and nothing kept");
  }
  const decoder = new XsDecoder();
  decoder.push(encodeMessage(message(0xffff, 5, 0, "")));
  assert.equal(decoder.next(), { message: message(0xffff, 5, 0, new Uint8Array(0)) }, "an unknown type is the server's business");
});

test("requests: malformed payloads, unknown types and unknown transactions get errors with the same ids", () => {
  const store = new XenStore();
  const connection = store.connect(0);
  const ask = (type: number, payload: string, tx = 0) => handleRequest(connection, message(type, 77, tx, payload), () => {});
  const errno = (reply: XsMessage) => (reply.type === XsType.Error ? text(reply.payload) : `type ${reply.type}: ${text(reply.payload)}`);
  assert.is(errno(ask(XsType.Read, "/a")), "EINVAL\0", "no NUL");
  assert.is(errno(ask(XsType.Read, "/a\0/b\0")), "EINVAL\0", "two strings");
  assert.is(errno(ask(XsType.Write, "/a")), "EINVAL\0");
  assert.is(errno(ask(XsType.Read, "/nope\0")), "ENOENT\0");
  assert.is(errno(ask(99, "")), "ENOSYS\0");
  assert.is(errno(ask(XsType.WatchEvent, "/a\0t\0")), "ENOSYS\0", "a client may not send daemon-only types");
  assert.is(errno(ask(XsType.Read, "/\0", 4242)), "ENOENT\0", "unknown transaction");
  assert.is(errno(ask(XsType.TransactionEnd, "T\0", 0)), "ENOENT\0");
  assert.is(errno(ask(XsType.TransactionStart, "\0", 5)), "EBUSY\0");
  assert.is(errno(ask(XsType.SetPerms, "/\0x9\0")), "EINVAL\0");
  assert.is(errno(ask(XsType.SetPerms, "/\0")), "EINVAL\0");
  assert.is(errno(ask(XsType.Watch, "/a\0")), "EINVAL\0");
  assert.is(errno(ask(XsType.GetDomainPath, "-1\0")), "EINVAL\0");
  assert.is(errno(ask(XsType.Control, "check\0")), "EINVAL\0");
  const ok = ask(XsType.Write, "/a\0v\0al");
  assert.equal([ok.type, ok.reqId, ok.txId, text(ok.payload)], [XsType.Write, 77, 0, "OK\0"]);
  assert.is(text(ask(XsType.Read, "/a\0").payload), "v\0al", "the value is everything after the path's NUL");
  const tx = Number(text(ask(XsType.TransactionStart, "\0").payload).slice(0, -1));
  const inside = ask(XsType.Write, "/a\0tx", tx);
  assert.equal([inside.type, inside.txId], [XsType.Write, tx], "the reply echoes tx_id");
  assert.is(text(ask(XsType.TransactionEnd, "T\0", tx).payload), "OK\0");
  assert.is(text(ask(XsType.GetPerms, "/a\0").payload), "n0\0");
  assert.is(text(ask(XsType.IsDomainIntroduced, "0\0").payload), "T\0");
  assert.is(text(ask(XsType.GetDomainPath, "3\0").payload), "/local/domain/3\0");

  // Seeded garbage: every request gets exactly one reply with its ids, and the store still works.
  const random = seededRandom(99);
  for (let i = 0; i < 3000; i++) {
    const length = Math.floor(random() * 24);
    const payload = Uint8Array.from({ length }, () => (random() < 0.2 ? 0 : "/ab@T0-x\xff"[Math.floor(random() * 9)].charCodeAt(0)));
    const type = Math.floor(random() * 26);
    const reply = handleRequest(connection, { type, reqId: i, txId: random() < 0.1 ? i : 0, payload }, () => {});
    assert.is(reply.reqId, i);
    assert.ok(reply.type === type || reply.type === XsType.Error);
    assert.ok(reply.payload.length <= XENSTORE_PAYLOAD_MAX);
  }
  store.write(0, "/still", "works");
  assert.is(store.readString(0, "/still"), "works");
});

test("DIRECTORY_PART pages through a long child list, each page within 4096 bytes", () => {
  const names = Array.from({ length: 400 }, (_, i) => `child-with-a-long-name-${i}`);
  const list = nulTerminated(names);
  assert.ok(list.length > XENSTORE_PAYLOAD_MAX);
  const seen: string[] = [];
  let offset = 0;
  for (let page = 0; page < 10; page++) {
    const reply = directoryPart(1234, list, offset);
    assert.ok(reply.length <= XENSTORE_PAYLOAD_MAX);
    const { strings } = splitPayload(reply);
    assert.is(strings[0], "1234");
    const chunk = strings.slice(1);
    if (chunk[chunk.length - 1] === "") {
      seen.push(...chunk.slice(0, -1));
      break;
    }
    seen.push(...chunk);
    offset += chunk.reduce((sum, name) => sum + name.length + 1, 0);
  }
  assert.equal(seen, names);
  assert.equal(splitPayload(directoryPart(5, list, list.length + 10)).strings, ["5", ""], "past the end: an empty list");
});

// ---- the socket server ----

let server: XenStoreServer;
const socketPath = join(dir, "xenstored.sock");

test.before(async () => {
  server = await serveXenStore(socketPath);
});

test.after(async () => {
  await server.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** A raw socket, for bytes no client library would send. */
function rawSocket(): Promise<{ socket: net.Socket; received: () => Uint8Array; closed: () => boolean }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ path: socketPath });
    const chunks: Uint8Array[] = [];
    let closed = false;
    socket.on("data", (chunk: Uint8Array) => chunks.push(new Uint8Array(chunk)));
    socket.on("close", () => (closed = true));
    socket.on("error", () => {});
    socket.once("connect", () => resolve({ socket, received: () => concat(chunks), closed: () => closed }));
    socket.once("error", reject);
  });
}

test("server: a client reads and writes, transactions retry on EAGAIN, watches arrive as WATCH_EVENTs", async () => {
  const a = await XenStoreClient.connect(socketPath);
  const b = await XenStoreClient.connect(socketPath);
  try {
    await a.write("/vm/1/name", "guest");
    assert.is(await b.readString("/vm/1/name"), "guest");
    assert.equal(await b.directory("/vm"), ["1"]);
    await a.setPerms("/vm/1", [{ domid: 0, access: "n" }, { domid: 1, access: "b" }]);
    assert.equal(await b.getPerms("/vm/1"), [{ domid: 0, access: "n" }, { domid: 1, access: "b" }]);
    assert.is(await rejectedErrno(b.read("/vm/2")), "ENOENT");
    assert.is(await rejectionCodeOf(b.read("/vm/2")), ErrorCode.XsNotFound);

    const events: string[] = [];
    b.onWatchEvent((path, token) => events.push(`${path}|${token}`));
    await b.watch("/vm", "vm-token");
    await until(() => events.length === 1);
    const tx = await a.transactionStart();
    await a.write("/vm/1/state", "running", tx);
    await b.write("/vm/1/state", "paused");
    await until(() => events.length === 2);
    assert.is(await rejectedErrno(a.transactionEnd(tx, true)), "EAGAIN");
    const retry = await a.transactionStart();
    await a.write("/vm/1/state", "running", retry);
    await a.transactionEnd(retry, true);
    await until(() => events.length === 3);
    assert.equal(events, ["/vm|vm-token", "/vm/1/state|vm-token", "/vm/1/state|vm-token"]);
    assert.is(await a.readString("/vm/1/state"), "running");
    await b.unwatch("/vm", "vm-token");
    await a.rm("/vm");
    assert.is(await rejectedErrno(b.read("/vm/1/name")), "ENOENT");
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.is(events.length, 3, "nothing after unwatch");
    assert.is(await a.getDomainPath(4), "/local/domain/4");
  } finally {
    a.close();
    b.close();
  }
});

async function rejectionCodeOf(promise: Promise<unknown>): Promise<string | undefined> {
  try {
    await promise;
  } catch (error) {
    return (error as { code?: string }).code;
  }
  return undefined;
}

test("server: replies echo req_id and tx_id; pipelined requests in one write all get answers", async () => {
  const raw = await rawSocket();
  try {
    const requests = [
      message(XsType.Write, 0xdeadbeef, 0, "/pipe/a\0one"),
      message(XsType.Read, 0xfffffffe, 0, "/pipe/a\0"),
      message(XsType.Read, 3, 0xabcdef, "/pipe/a\0"),
      message(XsType.Directory, 4, 0, "/pipe\0"),
    ];
    raw.socket.write(concat(requests.map(encodeMessage)));
    await until(() => {
      const d = new XsDecoder();
      d.push(raw.received());
      return drain(d).length === 4;
    });
    const replies = new XsDecoder();
    replies.push(raw.received());
    const got = drain(replies).map((d) => ("message" in d ? d.message : undefined));
    assert.equal(got.map((m) => [m?.type, m?.reqId, m?.txId, text(m!.payload)]), [
      [XsType.Write, 0xdeadbeef, 0, "OK\0"],
      [XsType.Read, 0xfffffffe, 0, "one"],
      [XsType.Error, 3, 0xabcdef, "ENOENT\0"],
      [XsType.Directory, 4, 0, "a\0"],
    ]);
  } finally {
    raw.socket.destroy();
  }
});

test("server: a header claiming more than 4096 bytes gets E2BIG and a disconnect; garbage gets errors; other clients go on", async () => {
  const bystander = await XenStoreClient.connect(socketPath);
  try {
    await bystander.write("/bystander", "here");
    const hostile = await rawSocket();
    const header = new Uint8Array(HEADER_SIZE);
    new DataView(header.buffer).setUint32(0, XsType.Write, true);
    new DataView(header.buffer).setUint32(4, 9, true);
    new DataView(header.buffer).setUint32(12, 0x7fffffff, true);
    hostile.socket.write(header);
    await until(hostile.closed, 3000);
    assert.equal([...hostile.received()], [...encodeMessage(message(XsType.Error, 9, 0, "E2BIG\0"))]);

    // Garbage that parses as headers of unknown types with small lengths: ENOSYS each, the connection stays.
    const garbage = await rawSocket();
    const junk = new Uint8Array(64).fill(0x01); // type 0x01010101, len 0x01010101 > 4096: disconnected too
    const small = concat([encodeMessage(message(0x5a5a, 1, 0, "zz")), encodeMessage(message(1234, 2, 0, ""))]);
    garbage.socket.write(small);
    await until(() => garbage.received().length >= 2 * (HEADER_SIZE + 7));
    const d = new XsDecoder();
    d.push(garbage.received());
    assert.equal(drain(d).map((x) => ("message" in x ? [x.message.type, x.message.reqId, text(x.message.payload)] : "oversized")), [
      [XsType.Error, 1, "ENOSYS\0"],
      [XsType.Error, 2, "ENOSYS\0"],
    ]);
    assert.not.ok(garbage.closed());
    garbage.socket.write(junk);
    await until(garbage.closed, 3000);

    // A client that vanishes mid-message.
    const quitter = await rawSocket();
    quitter.socket.write(encodeMessage(message(XsType.Write, 1, 0, "/half\0value")).subarray(0, 20));
    quitter.socket.destroy();

    assert.is(await bystander.readString("/bystander"), "here");
    await bystander.write("/bystander", "still here");
    assert.is(await bystander.readString("/bystander"), "still here");
    await until(() => server.connectionCount === 1, 3000);
  } finally {
    bystander.close();
  }
});

test("server: connections can act as an unprivileged domain; a second server on a live socket is refused", async () => {
  const guestSocket = join(dir, "guest.sock");
  const store = new XenStore();
  store.mkdir(0, "/local/domain/3");
  store.setPerms(0, "/local/domain/3", [{ domid: 3, access: "n" }]);
  store.write(0, "/secret", "dom0 only");
  const guestServer = await serveXenStore(guestSocket, { store, domid: 3 });
  try {
    const guest = await XenStoreClient.connect(guestSocket);
    await guest.write("data", "relative");
    assert.is(store.readString(0, "/local/domain/3/data"), "relative");
    assert.is(await rejectedErrno(guest.read("/secret")), "EACCES");
    assert.is(await rejectedErrno(guest.request(XsType.Introduce, nulTerminated(["4", "1", "1"]))), "EACCES");
    guest.close();
    assert.is(await rejectionCodeOf(serveXenStore(guestSocket)), ErrorCode.BadArgument);
  } finally {
    await guestServer.close();
  }
  assert.not.ok(fs.existsSync(guestSocket), "close removes the socket file");
  fs.writeFileSync(join(dir, "plain"), "not a socket");
  assert.is(await rejectionCodeOf(serveXenStore(join(dir, "plain"))), ErrorCode.BadArgument);
});

test.run();
