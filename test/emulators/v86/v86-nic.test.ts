import { suite } from "uvu";
import * as assert from "uvu/assert";
import type { V86NetworkBus } from "../../../host/emulators/v86/v86-internals.ts";
import { NET_CHANNEL, V86Nic } from "../../../host/emulators/v86/v86-nic.ts";
import type { MachineOutput } from "../../../host/machine/machine.ts";

const test = suite("v86's network card bridged to outputs and inputs");

/** v86's bus as the bridge sees it: listeners for what the card sends, a log of what it is given. */
function fakeBus() {
  const listeners = new Map<string, (data: Uint8Array) => void>();
  const given: Uint8Array[] = [];
  const bus: V86NetworkBus = {
    add_listener: (event, listener) => void listeners.set(event, listener),
    bus: { send: (event, data) => void (event === "net0-receive" && given.push(data)) },
  };
  return { bus, given, transmit: (frame: Uint8Array) => listeners.get("net0-send")!(frame) };
}

test("a frame the guest sends becomes a net0 output, copied (v86 reuses its buffer)", () => {
  const { bus, transmit } = fakeBus();
  const outputs: MachineOutput[] = [];
  new V86Nic(bus, (o) => outputs.push(o));
  const buffer = new Uint8Array(60).fill(7);
  transmit(buffer);
  buffer.fill(0);
  assert.is(outputs.length, 1);
  assert.is(outputs[0].channel, NET_CHANNEL);
  assert.ok(outputs[0].data.every((b) => b === 7));
});

test("frames from the network wait while the guest is paused, and reach the card in order on resume", () => {
  const { bus, given } = fakeBus();
  const nic = new V86Nic(bus, () => {});
  nic.resumed();
  nic.receive(Uint8Array.of(1));
  assert.is(given.length, 1, "a running guest gets a frame at once");
  nic.paused();
  nic.receive(Uint8Array.of(2));
  nic.receive(Uint8Array.of(3));
  assert.is(given.length, 1, "nothing reaches a paused card");
  nic.resumed();
  assert.equal(given.map((f) => f[0]), [1, 2, 3]);
  nic.paused();
  for (let i = 0; i < 600; i++) nic.receive(Uint8Array.of(4));
  assert.is(nic.stats.dropped, 600 - 512);
  nic.discardQueued();
  nic.resumed();
  assert.is(given.length, 3, "discarded frames never reach the card");
});

test.run();
