import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode, TandemError } from "../../host/errors.ts";
import { NetLink } from "../../host/net/net-link.ts";
import { startPasst } from "../../host/net/passt.ts";
import { arpReplyFor, arpRequest, dhcpAnswer, dhcpDiscover } from "../support/frames.ts";
import { passtTest } from "../support/passt.ts";

const test = suite("passt, the network a guest lives on");
const MAC = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const DHCPOFFER = 2;

/** The first frame from `link` that `match` accepts, within `ms`. */
function answer<T>(link: NetLink, match: (frame: Uint8Array) => T | undefined, ms = 5000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer from passt within ${ms} ms`)), ms);
    link.onFrame((frame) => {
      const found = match(frame);
      if (found === undefined) return;
      clearTimeout(timer);
      resolve(found);
    });
  });
}

test("passt answers DHCP and ARP over the link; after a client hangs up, the next one is served", async () => {
  if (!passtTest("passt link")) return;
  const passt = await startPasst({ extraArgs: ["--no-dhcpv6", "--no-ra", "--no-ndp"] });
  try {
    const first = await NetLink.connect({ path: passt.socketPath });
    const offered = answer(first, (f) => dhcpAnswer(f, 0x7a11));
    assert.ok(first.send(dhcpDiscover(MAC, 0x7a11)));
    const offer = await offered;
    assert.is(offer.type, DHCPOFFER);
    assert.ok(offer.router, "the offer names a router");
    const arped = answer(first, (f) => arpReplyFor(f, offer.router!));
    first.send(arpRequest(MAC, offer.yourAddress, offer.router!));
    assert.match(await arped, /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
    assert.ok(first.stats.framesIn >= 2 && first.stats.framesOut === 2);
    first.close();

    // The standby's turn: passt takes a new client once the old one is gone.
    const second = await NetLink.connect({ path: passt.socketPath });
    const again = answer(second, (f) => dhcpAnswer(f, 0x7a12));
    second.send(dhcpDiscover(MAC, 0x7a12));
    assert.is((await again).yourAddress, offer.yourAddress);
    second.close();
  } finally {
    await passt.stop();
  }
});

test("a passt that cannot start, or a network that is not there, is a coded error", async () => {
  for (const attempt of [
    () => startPasst({ command: "/nonexistent/passt" }),
    () => startPasst({ mtu: 10 }),
    () => NetLink.connect({ path: "/nonexistent/passt.socket" }),
  ]) {
    try {
      await attempt();
      assert.unreachable("it started");
    } catch (error) {
      assert.instance(error, TandemError);
      assert.ok(([ErrorCode.NetUnavailable, ErrorCode.BadArgument] as string[]).includes((error as TandemError).code), String(error));
    }
  }
});

test.run();
