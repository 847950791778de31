import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode, TandemError } from "../../host/errors.ts";
import { BitmapDirtyLog } from "../../host/memory/bitmap-dirty-log.ts";
import { DetectingDirtyLog } from "../../host/memory/detecting-dirty-log.ts";
import { GuestMemory, PAGE_SIZE } from "../../host/memory/guest-memory.ts";
import { MarkMapDirtyLog } from "../../host/memory/mark-map-dirty-log.ts";
import { VerifyingDirtyLog } from "../../host/memory/verifying-dirty-log.ts";
import { seededRandom } from "../../host/prng.ts";
import { errorCode } from "../support/errors.ts";

const test = suite("the mark-map log (a byte per page, written by the emulator) and the verifying log");

test("collect lists exactly the marked bytes and clears them, at every alignment and length; the first collect is every page", () => {
  const random = seededRandom(5);
  for (const offset of [0, 1, 2, 3, 4, 5, 4097]) {
    for (const pages of [1, 3, 4, 5, 63, 1000]) {
      const memory = new WebAssembly.Memory({ initial: 1 });
      const map = new Uint8Array(memory.buffer, offset, pages);
      const log = new MarkMapDirtyLog({ memory, offset, pageCount: pages });
      log.arm();
      map[0] = 9;
      assert.is(log.collect().length, pages);
      assert.ok(map.every((b) => b === 0), "the full collect clears marks made before it");
      for (let epoch = 0; epoch < 5; epoch++) {
        const expected: number[] = [];
        for (let p = 0; p < pages; p++) {
          if (random() < 0.2) {
            map[p] = 1 + Math.floor(random() * 255);
            expected.push(p);
          }
        }
        const marks = expected.map((p) => map[p]);
        // Bytes around the map are not the log's: never read as marks, never cleared.
        const before = offset > 0 ? (new Uint8Array(memory.buffer)[offset - 1] = 77) : 0;
        new Uint8Array(memory.buffer)[offset + pages] = 66;
        assert.equal([...log.collect()], expected, `offset ${offset}, ${pages} pages`);
        assert.ok(map.every((b) => b === 0));
        assert.is(new Uint8Array(memory.buffer)[offset + pages], 66);
        if (offset > 0) assert.is(new Uint8Array(memory.buffer)[offset - 1], before);
        expected.forEach((p, i) => assert.equal(log.lastMark(p), { mark: marks[i], epoch: log.epoch - 1 }));
      }
    }
  }
  const memory = new WebAssembly.Memory({ initial: 1 });
  assert.is(errorCode(() => new MarkMapDirtyLog({ memory, offset: 65000, pageCount: 1000 })), ErrorCode.BadRegion);
});

test("the verifying log returns the tracker's pages, counts the over-marked, and names a missed page", () => {
  const guest = new GuestMemory(new ArrayBuffer(64 * PAGE_SIZE));
  const tracker = new BitmapDirtyLog(guest);
  const log = new VerifyingDirtyLog(tracker, new DetectingDirtyLog(guest), (page) => `page ${page} test`);
  const ram = guest.bytes();
  log.arm();
  assert.is(log.collect().length, 64);
  ram[5 * PAGE_SIZE] = 1;
  tracker.markRange(5 * PAGE_SIZE, 1);
  tracker.markRange(9 * PAGE_SIZE, 1); // marked, unchanged
  assert.equal([...log.collect()], [5, 9]);
  assert.equal(log.counts, { checked: 1, tracked: 2, changed: 1, overMarked: 1 });
  ram[7 * PAGE_SIZE + 3] = 2; // changed, not marked
  let caught: unknown;
  try {
    log.collect();
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof TandemError && caught.code === ErrorCode.TrackingMissed);
  assert.match((caught as Error).message, /page 7 \(guest-physical 0x7000; last write: page 7 test\)/);
  assert.is(log.collect().length, 64, "re-armed: the next epoch is whole");
});

test.run();
