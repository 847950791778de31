import { existsSync } from "node:fs";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode, TandemError } from "../../host/errors.ts";
import { GuestNetwork, type NetworkEvent } from "../../host/net/guest-network.ts";
import { dhcpAnswer, dhcpDiscover } from "../support/frames.ts";
import { passtTest } from "../support/passt.ts";
import { until } from "../support/session.ts";

const test = suite("one host's end of a guest's network: up while it runs the guest, down when it hands over");
const MAC = [0x52, 0x54, 0x00, 0x12, 0x34, 0x57];

/** A card that records the frames it is given. */
function card(): { frames: Uint8Array[]; receive(frame: Uint8Array): void } {
  const frames: Uint8Array[] = [];
  return { frames, receive: (frame) => void frames.push(frame) };
}

/** Whether process `pid` exists. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test("a host that starts passt: frames released before the link is up go out once it is; it hangs up for the next host, which gets answers; passt stops with its owner", async () => {
  if (!passtTest("guest network")) return;
  const events: NetworkEvent[] = [];
  const firstCard = card();
  const first = new GuestNetwork(firstCard, { kind: "passt", passt: { extraArgs: ["--no-dhcpv6", "--no-ra", "--no-ndp"] } }, (e) => events.push(e));
  let second: GuestNetwork | undefined;
  try {
    first.release(dhcpDiscover(MAC, 0x5101)); // waits in the bridge
    await first.up();
    assert.equal(events.map((e) => e.event), ["started", "connected"]);
    const started = events[0] as Extract<NetworkEvent, { event: "started" }>;
    await until(() => firstCard.frames.some((f) => dhcpAnswer(f, 0x5101) !== undefined), 5000);

    // The guest moves to another host (a takeover): this one hangs up, the other connects.
    first.down();
    assert.is(events.at(-1)!.event, "disconnected");
    const secondCard = card();
    second = new GuestNetwork(secondCard, { kind: "socket", path: first.socketPath! });
    await second.up();
    second.release(dhcpDiscover(MAC, 0x5102));
    await until(() => secondCard.frames.some((f) => dhcpAnswer(f, 0x5102) !== undefined), 5000);
    assert.not.ok(firstCard.frames.some((f) => dhcpAnswer(f, 0x5102) !== undefined), "the old host hears nothing more");

    // The host that handed over leaves passt running for the new owner.
    await first.close();
    assert.ok(alive(started.pid), "passt still runs for the new owner");
    await second.close();
    await first.passt!.stop();
    assert.not.ok(existsSync(started.socket));
  } finally {
    await second?.close();
    await first.close();
    await first.passt?.stop();
  }
});

test("a socket nothing serves: up() rejects E_NET_UNAVAILABLE and says so; close() ends the retries", async () => {
  const events: NetworkEvent[] = [];
  const network = new GuestNetwork(card(), { kind: "socket", path: "/nonexistent/tandem-passt.socket" }, (e) => events.push(e));
  try {
    await network.up();
    assert.unreachable("it connected");
  } catch (error) {
    assert.instance(error, TandemError);
    assert.is((error as TandemError).code, ErrorCode.NetUnavailable);
  }
  assert.is(events[0]?.event, "unreachable");
  await network.close();
});

test("a passt started and still running the guest stops at close", async () => {
  if (!passtTest("guest network")) return;
  const network = new GuestNetwork(card(), { kind: "passt", passt: {} });
  await network.up();
  const pid = network.passt!.pid;
  await network.close();
  await until(() => !alive(pid), 5000);
});

test.run();
