import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode, TandemError } from "../host/errors.ts";
import { startOperation } from "../host/ops/operation.ts";
import { rejectionCode } from "./support/session.ts";

const test = suite("long operations: promise, progress, cancellation, codes");

const tick = () => new Promise((r) => setTimeout(r, 1));

test("resolves with the body's result; progress reaches listeners as it happens", async () => {
  const seen: string[] = [];
  const op = startOperation("copy", async (ctx) => {
    for (let i = 1; i <= 3; i++) {
      await tick();
      ctx.report({ phase: "copying", bytes: i * 100, pages: i });
    }
    return "done";
  });
  const stop = op.onProgress((p) => seen.push(`${p.phase}:${p.bytes}:${p.pages}`));
  assert.not.ok(op.settled);
  assert.is(await op.promise, "done");
  assert.ok(op.settled);
  assert.equal(seen, ["copying:100:1", "copying:200:2", "copying:300:3"]);
  assert.is(op.progress.bytes, 300);
  stop();
});

test("cancelling through the handle or the signal rejects with E_ABORTED and the reason", async () => {
  let cleanedUp = false;
  const body = async (ctx: { signal: AbortSignal; throwIfAborted(): void }) => {
    try {
      for (;;) {
        await tick();
        ctx.throwIfAborted();
      }
    } finally {
      cleanedUp = true;
    }
  };
  const a = startOperation("migrate", body);
  a.abort("operator asked");
  try {
    await a.promise;
    assert.unreachable("resolved");
  } catch (error) {
    assert.is((error as TandemError).code, ErrorCode.Aborted);
    assert.match((error as Error).message, "operator asked");
  }
  assert.ok(cleanedUp, "the body ran its clean-up");

  const controller = new AbortController();
  const b = startOperation("save", body, { signal: controller.signal });
  setTimeout(() => controller.abort(), 5);
  assert.is(await rejectionCode(b.promise), ErrorCode.Aborted);

  const before = new AbortController();
  before.abort();
  let ran = false;
  const c = startOperation("restore", async () => void (ran = true), { signal: before.signal });
  assert.is(await rejectionCode(c.promise), ErrorCode.Aborted);
  assert.not.ok(ran, "an operation cancelled before it started never runs");
});

test("a coded error passes through; anything else becomes E_FAILED", async () => {
  const coded = startOperation("replicate", async () => {
    throw new TandemError(ErrorCode.PeerLost, "standby gone");
  });
  assert.is(await rejectionCode(coded.promise), ErrorCode.PeerLost);
  const plain = startOperation("save", async () => {
    throw new Error("disk full");
  });
  try {
    await plain.promise;
  } catch (error) {
    assert.is((error as TandemError).code, ErrorCode.Failed);
    assert.match((error as Error).message, "save failed: disk full");
  }
});

test("an operation that finishes before noticing a late cancel still resolves", async () => {
  const op = startOperation("quick", async () => 42);
  await op.promise;
  op.abort();
  assert.is(await op.promise, 42);
});

test.run();
