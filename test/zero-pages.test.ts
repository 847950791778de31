import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode } from "../host/errors.ts";
import { errorCode } from "./support/errors.ts";
import { GuestMemory, PAGE_SIZE } from "../host/memory/guest-memory.ts";
import { STAGING_PAGES } from "../host/memory/ram-access.ts";
import { ZeroPageFinder } from "../host/memory/zero-pages.ts";
import { seededRandom } from "../host/prng.ts";
import { FLAVORS } from "./support/flavors.ts";

const test = suite("zero-page finder");

function fill(guest: GuestMemory, seed: number): Set<number> {
  const random = seededRandom(seed);
  const zero = new Set<number>();
  for (let p = 0; p < guest.pageCount; p++) {
    if (random() < 0.4) zero.add(p);
    else guest.bytes()[p * PAGE_SIZE + Math.floor(random() * PAGE_SIZE)] = 1 + Math.floor(random() * 255);
  }
  return zero;
}

test("finds the zero pages of a list, in place and staged, for every flavor", () => {
  const pages = STAGING_PAGES + 90; // the staged path needs two windows
  for (const flavor of FLAVORS) {
    for (const backing of [new WebAssembly.Memory({ initial: 40 }), new ArrayBuffer(pages * PAGE_SIZE + 512)]) {
      const guest = new GuestMemory(backing, { offset: 512, size: pages * PAGE_SIZE });
      const zero = fill(guest, 51);
      const finder = new ZeroPageFinder(guest, { kernels: flavor });
      const random = seededRandom(52);
      const list = Uint32Array.from({ length: 700 }, () => Math.floor(random() * pages));
      const label = `${flavor} ${backing instanceof ArrayBuffer ? "staged" : "in place"}`;
      assert.equal(Array.from(finder.find(list)), Array.from(list).filter((p) => zero.has(p)), label);
      assert.equal(Array.from(finder.find(new Uint32Array(0))), [], `${label}: empty list`);
      assert.is(errorCode(() => finder.find(Uint32Array.of(0, pages))), ErrorCode.OutOfRange, `${label}: page past the guest`);
    }
  }
});

test.run();
