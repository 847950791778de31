import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode } from "../../host/errors.ts";
import { checkIdentity, contentDigest, guestIdentity, identityDifferences, type IdentityField } from "../../host/machine/guest-identity.ts";
import { ReferenceMachine } from "../../host/machine/reference-machine.ts";
import { errorCode } from "../support/errors.ts";

const test = suite("guest identity: stable, sensitive to every field, says what differs");

const FIELDS: IdentityField[] = [
  { name: "memory", kind: "value", value: "128 MiB" },
  { name: "initrd", kind: "digest", value: contentDigest(Uint8Array.of(1, 2, 3)) },
  { name: "cmdline", kind: "value", value: "console=ttyS0" },
];

test("the same fields give the same digest, a known SHA-256 of a fixed encoding", () => {
  const a = guestIdentity(FIELDS);
  const b = guestIdentity(FIELDS.map((f) => ({ ...f })));
  assert.is(a.digest, b.digest);
  assert.match(a.digest, /^[0-9a-f]{64}$/);
  assert.is(guestIdentity([]).digest, contentDigest(new Uint8Array(0)), "no fields: the SHA-256 of nothing");
  // One field: kind 1, a zero byte, u16 name length, u32 value length, name, value.
  const one = Uint8Array.of(1, 0, 1, 0, 2, 0, 0, 0, 0x6d, 0x34, 0x32);
  assert.is(guestIdentity([{ name: "m", kind: "value", value: "42" }]).digest, contentDigest(one));
});

test("any change of a name, kind, value or the order changes the digest", () => {
  const base = guestIdentity(FIELDS).digest;
  const changed: IdentityField[][] = [
    FIELDS.map((f, i) => (i === 0 ? { ...f, value: "64 MiB" } : f)),
    FIELDS.map((f, i) => (i === 1 ? { ...f, value: contentDigest(Uint8Array.of(1, 2, 4)) } : f)),
    FIELDS.map((f, i) => (i === 2 ? { ...f, kind: "digest" as const } : f)),
    FIELDS.map((f, i) => (i === 2 ? { ...f, name: "cmdline2" } : f)),
    [FIELDS[1], FIELDS[0], FIELDS[2]],
    FIELDS.slice(0, 2),
    // Bytes moved from one field into the next: the lengths in the encoding tell them apart.
    [{ name: "memory", kind: "value", value: "128 MiBx" }, { name: "y", kind: "value", value: "" }],
    [{ name: "memory", kind: "value", value: "128 MiB" }, { name: "xy", kind: "value", value: "" }],
  ];
  const digests = new Set([base, ...changed.map((fields) => guestIdentity(fields).digest)]);
  assert.is(digests.size, changed.length + 1);
});

test("a field named twice or without a name is refused", () => {
  assert.is(errorCode(() => guestIdentity([FIELDS[0], FIELDS[0]])), ErrorCode.BadArgument);
  assert.is(errorCode(() => guestIdentity([{ name: "", kind: "value", value: "" }])), ErrorCode.BadArgument);
});

test("the differences name each field: values shown, contents compared, missing ones said", () => {
  const primary = guestIdentity(FIELDS);
  const standby = guestIdentity([
    { name: "memory", kind: "value", value: "64 MiB" },
    { name: "initrd", kind: "digest", value: contentDigest(Uint8Array.of(9)) },
    { name: "hda", kind: "value", value: "1 MiB, read-write" },
  ]);
  assert.equal(identityDifferences(primary, standby, "primary", "standby"), [
    "memory: primary 128 MiB, standby 64 MiB",
    "initrd: content differs",
    "cmdline: standby has none",
    "hda: primary has none",
  ]);
  assert.equal(identityDifferences(primary, guestIdentity(FIELDS), "primary", "standby"), []);
  assert.equal(identityDifferences(primary, guestIdentity([FIELDS[2], FIELDS[0], FIELDS[1]]), "a", "b"), ["the same fields in another order"]);
});

test("checkIdentity: E_GUEST_MISMATCH with the differences; nothing to compare passes", () => {
  const primary = guestIdentity(FIELDS);
  const standby = guestIdentity(FIELDS.slice(0, 2));
  try {
    checkIdentity(primary, standby, "primary", "standby");
    assert.unreachable("a different guest passed");
  } catch (error) {
    assert.is((error as { code: string }).code, ErrorCode.GuestMismatch);
    assert.match((error as Error).message, "the primary's guest is not this standby's: cmdline: standby has none");
  }
  assert.is(errorCode(() => checkIdentity(primary, guestIdentity(FIELDS), "primary", "standby")), undefined);
  assert.is(errorCode(() => checkIdentity(undefined, standby, "image", "machine")), undefined);
  assert.is(errorCode(() => checkIdentity(primary, undefined, "primary", "standby")), undefined);
});

test("the reference machine: built alike, the same identity; memory, disk and workload count, the seed does not", () => {
  const options = { memoryBytes: 1 << 20, diskBytes: 64 * 1024, dirtyPages: 4, diskEvery: 3, seed: 1 };
  const id = (extra: object) => new ReferenceMachine({ ...options, ...extra }).identity.digest;
  assert.is(id({}), id({}));
  assert.is(id({ seed: 99, tickMs: 5, stepsPerTick: 2 }), id({}), "the seed's state travels in the devices; the pace is not state");
  const others = [id({ memoryBytes: 2 << 20 }), id({ diskBytes: 32 * 1024 }), id({ dirtyPages: 5 }), id({ diskEvery: 4 })];
  assert.is(new Set([id({}), ...others]).size, 5);
  const a = new ReferenceMachine(options).identity;
  const b = new ReferenceMachine({ ...options, memoryBytes: 2 << 20 }).identity;
  assert.equal(identityDifferences(a, b, "primary", "standby"), ["memory: primary 1 MiB, standby 2 MiB"]);
});

test.run();
