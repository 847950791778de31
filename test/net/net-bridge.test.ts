import { suite } from "uvu";
import * as assert from "uvu/assert";
import { NetBridge } from "../../host/net/net-bridge.ts";
import { NetLink } from "../../host/net/net-link.ts";
import { startPasst } from "../../host/net/passt.ts";
import { dhcpAnswer, dhcpDiscover } from "../support/frames.ts";
import { passtTest } from "../support/passt.ts";

const test = suite("the bridge between a guest's card and the network");
const MAC = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];

test("frames released before the link is attached wait, then go out in order; answers reach the card", async () => {
  if (!passtTest("net bridge")) return;
  const passt = await startPasst({ extraArgs: ["--no-dhcpv6", "--no-ra", "--no-ndp"] });
  try {
    let answered!: (frame: Uint8Array) => void;
    const answer = new Promise<Uint8Array>((resolve) => (answered = resolve));
    const bridge = new NetBridge({ receive: (frame) => void (dhcpAnswer(frame, 1) && answered(frame)) });
    // A standby that just took over releases before its link is up.
    bridge.release(dhcpDiscover(MAC, 1));
    bridge.release(dhcpDiscover(MAC, 2));
    const link = await NetLink.connect({ path: passt.socketPath });
    bridge.attach(link);
    assert.is(link.stats.framesOut, 2, "the waiting frames went out on attach");
    // passt answers one DISCOVER of a burst (a real client waits seconds before asking again).
    const offer = await Promise.race([answer, new Promise<never>((_, reject) => setTimeout(() => reject(new Error("no DHCP answer")), 5000))]);
    assert.is(dhcpAnswer(offer, 1)?.type, 2, "the first waiting frame was answered, through the bridge, to the card");
    bridge.detach();
    link.close();
  } finally {
    await passt.stop();
  }
});

test("with no link, a bounded number of frames wait and the rest are counted as dropped", () => {
  const bridge = new NetBridge({ receive: () => {} });
  for (let i = 0; i < 1100; i++) bridge.release(new Uint8Array(60));
  assert.is(bridge.dropped, 1100 - 1024);
});

test.run();
