import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode, TandemError } from "../../host/errors.ts";
import { PairEvent, PairState, PairStateMachine, nextPairState, runsGuest } from "../../host/replication/pair-state.ts";
import { ReleaseGate, type ReleasedOutput } from "../../host/replication/release-gate.ts";

const test = suite("pair state machine and the release gate");

const ALL_STATES = Object.values(PairState);
const ALL_EVENTS = Object.values(PairEvent);
const LEGAL: [PairState, PairEvent, PairState][] = [
  [PairState.Alone, PairEvent.StandbyJoined, PairState.Syncing],
  [PairState.Alone, PairEvent.LeaseLost, PairState.Fenced],
  [PairState.Syncing, PairEvent.SyncComplete, PairState.Protected],
  [PairState.Syncing, PairEvent.StandbyLost, PairState.Alone],
  [PairState.Syncing, PairEvent.LeaseLost, PairState.Fenced],
  [PairState.Protected, PairEvent.StandbyLost, PairState.Alone],
  [PairState.Protected, PairEvent.LeaseLost, PairState.Fenced],
  [PairState.Fenced, PairEvent.Rejoined, PairState.StandingBy],
  [PairState.StandingBy, PairEvent.TakeOver, PairState.Alone],
  [PairState.StandingBy, PairEvent.Rejoined, PairState.StandingBy],
];

test("the legal transitions, and every other pair of state and event is a coded error", () => {
  for (const state of ALL_STATES) {
    for (const event of ALL_EVENTS) {
      const legal = LEGAL.find(([s, e]) => s === state && e === event);
      if (legal) {
        assert.is(nextPairState(state, event), legal[2], `${state} --${event}-->`);
      } else {
        try {
          nextPairState(state, event);
          assert.unreachable(`${state} --${event}--> should be refused`);
        } catch (error) {
          assert.instance(error, TandemError);
          assert.is((error as TandemError).code, ErrorCode.PairTransition);
        }
      }
    }
  }
});

test("a fenced primary never runs its guest; a standby neither", () => {
  assert.equal(ALL_STATES.filter(runsGuest).sort(), [PairState.Alone, PairState.Protected, PairState.Syncing].sort());
});

test("the machine walks a chain of failures and tells its listeners each step", () => {
  const seen: string[] = [];
  const pair = new PairStateMachine(PairState.Alone);
  pair.onChange((state, event, previous) => seen.push(`${previous}>${event}>${state}`));
  pair.apply(PairEvent.StandbyJoined);
  pair.apply(PairEvent.SyncComplete);
  pair.apply(PairEvent.StandbyLost);
  pair.apply(PairEvent.StandbyJoined);
  pair.apply(PairEvent.LeaseLost);
  pair.apply(PairEvent.Rejoined);
  assert.is(pair.state, PairState.StandingBy);
  assert.equal(seen, [
    "alone>standby-joined>syncing", "syncing>sync-complete>protected", "protected>standby-lost>alone",
    "alone>standby-joined>syncing", "syncing>lease-lost>fenced", "fenced>rejoined>standing-by",
  ]);
  assert.throws(() => pair.apply(PairEvent.SyncComplete), (e: TandemError) => e.code === ErrorCode.PairTransition);
  assert.is(pair.state, PairState.StandingBy, "a refused event changes nothing");
});

const out = (text: string) => ({ channel: "serial", data: new TextEncoder().encode(text) });

test("the gate releases an epoch only on its ACK, in seq order, continuing a given seq", () => {
  const released: ReleasedOutput[] = [];
  const gate = new ReleaseGate((o) => released.push(o), { lastSeq: 10 });
  gate.hold(1, gate.seal([out("a"), out("b")]));
  gate.hold(2, gate.seal([out("c")]));
  assert.is(gate.heldBytes, 3);
  assert.is(released.length, 0);
  assert.ok(gate.acknowledge(1));
  assert.equal(released.map((o) => o.seq), [11, 12]);
  assert.ok(gate.acknowledge(2));
  assert.equal(released.map((o) => o.seq), [11, 12, 13]);
  assert.ok(gate.direct(out("d")));
  assert.equal(released.map((o) => o.seq), [11, 12, 13, 14]);
  assert.is(gate.heldBytes, 0);
});

test("with a lease, the gate checks it before every single output and shuts for good when it ends", () => {
  const released: number[] = [];
  let checks = 0;
  let validFor = 3; // the lease ends between the third and fourth output
  let shuts = 0;
  const gate = new ReleaseGate((o) => released.push(o.seq), {
    lease: { valid: () => (checks++, validFor-- > 0) },
    onShut: () => shuts++,
  });
  gate.hold(1, gate.seal([out("1"), out("2")]));
  gate.hold(2, gate.seal([out("3"), out("4"), out("5")]));
  assert.ok(gate.acknowledge(1));
  assert.not.ok(gate.acknowledge(2));
  assert.equal(released, [1, 2, 3]);
  assert.is(checks, 4, "one check per output, the failed one included");
  assert.ok(gate.isShut);
  assert.is(shuts, 1);
  validFor = 100; // even a lease that looks valid again opens nothing: fenced is final
  assert.not.ok(gate.releaseHeld());
  assert.not.ok(gate.direct(out("6")));
  assert.equal(released, [1, 2, 3]);
  assert.is(gate.heldBytes, 3, "what was not released stays held, counted");
});

test.run();
