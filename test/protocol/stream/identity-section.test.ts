import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode } from "../../../host/errors.ts";
import {
  FIELD_HEAD_SIZE, F_KIND, F_NAME_LENGTH, F_RESERVED, F_VALUE_LENGTH, HEADER_SIZE, H_FLAGS, HeaderFlag, IDENTITY_HEAD_SIZE,
  I_COUNT, I_LENGTH, MAX_FIELD_VALUE_BYTES, MAX_IDENTITY_FIELDS, REGION_SIZE, type StreamHeader, type StreamIdentityField,
} from "../../../host/protocol/stream/format.ts";
import { StreamReader } from "../../../host/protocol/stream/reader.ts";
import { StreamWriter } from "../../../host/protocol/stream/writer.ts";
import { errorCode } from "../../support/errors.ts";

const test = suite("the checkpoint stream header's identity section");
const PAGE = 4096;
const IDENTITY: StreamIdentityField[] = [
  { name: "memory", kind: "value", value: "128 MiB" },
  { name: "initrd", kind: "digest", value: "ab".repeat(32) },
  { name: "cmdline", kind: "value", value: "\"console=ttyS0 é\"" },
  { name: "e", kind: "value", value: "" },
];
const START = HEADER_SIZE + REGION_SIZE; // one region

function stream(identity?: StreamIdentityField[]): Uint8Array {
  const header: StreamHeader = { pageSize: PAGE, regions: [{ size: 16 * PAGE }], identity };
  const w = new StreamWriter(header);
  w.writeHeader();
  w.zeroPages(0, [1]);
  w.checkpointEnd(1, 1);
  return w.take();
}

test("the identity round-trips, the flag is set, the section lies after the regions at its named offsets", () => {
  const bytes = stream(IDENTITY);
  const view = new DataView(bytes.buffer);
  assert.is(view.getUint32(H_FLAGS, true), HeaderFlag.Identity);
  assert.is(view.getUint32(START + I_COUNT, true), IDENTITY.length);
  const length = view.getUint32(START + I_LENGTH, true);
  assert.is(length % 8, 0);
  // The first field: "memory" = "128 MiB", 13 bytes of text padded to 16.
  const f = START + IDENTITY_HEAD_SIZE;
  assert.is(bytes[f + F_KIND], 1);
  assert.is(bytes[f + F_RESERVED], 0);
  assert.is(view.getUint16(f + F_NAME_LENGTH, true), 6);
  assert.is(view.getUint32(f + F_VALUE_LENGTH, true), 7);
  assert.is(new TextDecoder().decode(bytes.subarray(f + FIELD_HEAD_SIZE, f + FIELD_HEAD_SIZE + 13)), "memory128 MiB");
  assert.is(bytes[f + FIELD_HEAD_SIZE + 16 + F_KIND], 2, "the second field starts at the next multiple of 8: a digest");
  const reader = new StreamReader();
  const records = reader.read(bytes);
  assert.equal(reader.header!.identity, IDENTITY);
  assert.equal(records.map((r) => r.type), ["zero-pages", "checkpoint-end"], "the records after the section read as before");
  assert.is(view.getUint32(START + length, true), 2, "the first record (ZERO_PAGES) begins where the section ends");
});

test("a stream without the flag (as written before identities) reads with no identity", () => {
  const bytes = stream();
  assert.is(new DataView(bytes.buffer).getUint32(H_FLAGS, true), 0);
  const reader = new StreamReader();
  assert.is(reader.read(bytes).length, 2);
  assert.is(reader.header!.identity, undefined);
  const empty = stream([]);
  const again = new StreamReader();
  again.read(empty);
  assert.equal(again.header!.identity, [], "an empty identity is a section with no fields");
});

test("the header alone, identity included, is a whole first transaction", () => {
  const w = new StreamWriter({ pageSize: PAGE, regions: [{ size: 16 * PAGE }], identity: IDENTITY });
  w.writeHeader();
  const reader = new StreamReader();
  assert.equal(reader.read(w.take()), []);
  assert.equal(reader.header!.identity, IDENTITY);
});

test("the writer refuses identities past the section's limits", () => {
  const write = (identity: StreamIdentityField[]) => () => new StreamWriter({ pageSize: PAGE, regions: [{ size: PAGE }], identity });
  assert.is(errorCode(write(Array.from({ length: MAX_IDENTITY_FIELDS + 1 }, (_, i) => ({ name: `f${i}`, kind: "value" as const, value: "" })))), ErrorCode.BadArgument);
  assert.is(errorCode(write([{ name: "x".repeat(65), kind: "value", value: "" }])), ErrorCode.BadArgument);
  assert.is(errorCode(write([{ name: "", kind: "value", value: "" }])), ErrorCode.BadArgument);
  assert.is(errorCode(write([{ name: "cmdline", kind: "value", value: "x".repeat(MAX_FIELD_VALUE_BYTES + 1) }])), ErrorCode.BadArgument);
  assert.is(errorCode(write([{ name: "cmdline", kind: "value", value: "x".repeat(MAX_FIELD_VALUE_BYTES) }])), undefined);
});

test("a damaged section is E_STREAM_FORMAT, never a crash or a misread", () => {
  const good = stream(IDENTITY);
  const f = START + IDENTITY_HEAD_SIZE;
  const cases: [string, (b: Uint8Array, v: DataView) => void][] = [
    ["section longer than the stream", (_b, v) => v.setUint32(START + I_LENGTH, 1 << 30, true)],
    ["section length not a multiple of 8", (_b, v) => v.setUint32(START + I_LENGTH, v.getUint32(START + I_LENGTH, true) - 4, true)],
    ["section shorter than its fields", (_b, v) => v.setUint32(START + I_LENGTH, v.getUint32(START + I_LENGTH, true) - 8, true)],
    ["section longer than its fields", (_b, v) => v.setUint32(START + I_LENGTH, v.getUint32(START + I_LENGTH, true) + 8, true)],
    ["too many fields", (_b, v) => v.setUint32(START + I_COUNT, MAX_IDENTITY_FIELDS + 1, true)],
    ["more fields than there are", (_b, v) => v.setUint32(START + I_COUNT, IDENTITY.length + 1, true)],
    ["kind 3", (b) => (b[f + F_KIND] = 3)],
    ["reserved byte", (b) => (b[f + F_RESERVED] = 1)],
    ["empty name", (_b, v) => v.setUint16(f + F_NAME_LENGTH, 0, true)],
    ["name past its section", (_b, v) => v.setUint16(f + F_NAME_LENGTH, 64, true)],
    ["value too long", (_b, v) => v.setUint32(f + F_VALUE_LENGTH, MAX_FIELD_VALUE_BYTES + 1, true)],
    ["padding", (b) => (b[f + FIELD_HEAD_SIZE + 13] = 1)],
    ["not UTF-8", (b) => (b[f + FIELD_HEAD_SIZE] = 0xff)],
    // The second field, "initrd", starts 24 bytes after the first (8 + 13 padded to 16).
    ["a name twice", (b) => b.set(new TextEncoder().encode("memory"), f + 24 + FIELD_HEAD_SIZE)],
  ];
  for (const [name, damage] of cases) {
    const bad = good.slice();
    damage(bad, new DataView(bad.buffer));
    assert.is(errorCode(() => new StreamReader().read(bad)), ErrorCode.StreamFormat, name);
  }
  for (let cut = START; cut < START + 40; cut += 4) {
    assert.is(errorCode(() => new StreamReader().read(good.subarray(0, cut))), ErrorCode.StreamFormat, `cut at ${cut}`);
  }
});

test.run();
