import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode } from "../host/errors.ts";
import { errorCode } from "./support/errors.ts";
import { GuestMemory, PAGE_SIZE } from "../host/memory/guest-memory.ts";

const test = suite("guest memory regions");

test("a region of a Wasm memory: offset, size, pages, in-place heap", () => {
  const memory = new WebAssembly.Memory({ initial: 3 });
  const guest = new GuestMemory(memory, { offset: 8, size: 10 * PAGE_SIZE });
  assert.is(guest.pageCount, 10);
  assert.is(guest.wasmMemory, memory);
  assert.is(guest.heap?.memory, memory);
  new Uint8Array(memory.buffer)[8 + 2 * PAGE_SIZE + 1] = 77;
  assert.is(guest.page(2)[1], 77, "page(2) is a view at the region's offset");
});

test("a region of an ArrayBuffer has no in-place heap; default size runs to the end", () => {
  const guest = new GuestMemory(new ArrayBuffer(5 * PAGE_SIZE + 100), { offset: 100 });
  assert.is(guest.pageCount, 5);
  assert.is(guest.wasmMemory, undefined);
  assert.is(guest.heap, undefined);
});

test("bytes() stays valid when the memory grows", () => {
  const memory = new WebAssembly.Memory({ initial: 1 });
  const guest = new GuestMemory(memory, { size: PAGE_SIZE });
  guest.bytes()[5] = 9;
  memory.grow(1);
  assert.is(guest.bytes()[5], 9);
  assert.is(guest.bytes().length, PAGE_SIZE);
});

test("bad regions and pages are coded errors", () => {
  const buffer = new ArrayBuffer(4 * PAGE_SIZE);
  assert.is(errorCode(() => new GuestMemory(buffer, { size: 100 })), ErrorCode.BadRegion, "size not a page multiple");
  assert.is(errorCode(() => new GuestMemory(buffer, { size: 0 })), ErrorCode.BadRegion, "empty");
  assert.is(errorCode(() => new GuestMemory(buffer, { offset: -1 })), ErrorCode.BadRegion, "negative offset");
  assert.is(errorCode(() => new GuestMemory(buffer, { offset: 1.5, size: PAGE_SIZE })), ErrorCode.BadRegion, "fractional offset");
  assert.is(errorCode(() => new GuestMemory(buffer, { offset: PAGE_SIZE, size: 4 * PAGE_SIZE })), ErrorCode.BadRegion, "past the end");
  const guest = new GuestMemory(buffer);
  assert.is(errorCode(() => guest.page(4)), ErrorCode.OutOfRange, "page past the end");
  assert.is(errorCode(() => guest.page(-1)), ErrorCode.OutOfRange, "negative page");
});

test.run();
