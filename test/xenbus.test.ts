import { suite } from "uvu";
import * as assert from "uvu/assert";
import { execFile } from "node:child_process";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ErrorCode } from "../host/errors.ts";
import { EventChannels } from "../host/xen/event-channel.ts";
import { GrantTable } from "../host/xen/grants/grant-table.ts";
import type { GrantMapping } from "../host/xen/grants/grant-mapping.ts";
import { XenbusBackend, type BackendDevice } from "../host/xen/xenbus/backend.ts";
import { XenbusFrontend, type FrontendDevice } from "../host/xen/xenbus/frontend.ts";
import { backendPath, frontendPath } from "../host/xen/xenbus/paths.ts";
import { XenbusState, backendTransition, frontendTransition, parseXenbusState, type BackendEvent, type FrontendEvent } from "../host/xen/xenbus/states.ts";
import { createDevice, removeDevice, unplugDevice } from "../host/xen/xenbus/toolstack.ts";
import { inTransaction, readOptional, type XenbusStore } from "../host/xen/xenbus/xenbus-store.ts";
import { serveXenStore } from "../host/xen/xenstore/server.ts";
import { XenStore, type XenStoreConnection } from "../host/xen/xenstore/store.ts";
import { errorCode } from "./support/errors.ts";
import { until } from "./support/session.ts";

const test = suite("xenbus: the backend/frontend handshake through xenstore, disconnect, reconnect, unplug, state machines");
const XENBUS_H = "/usr/include/xen/io/xenbus.h";
const BACKEND = 0;
const GUEST = 5;
const ID = { type: "vbd", backendDomid: BACKEND, frontendDomid: GUEST, devid: 51712 };
const BACK = backendPath(ID);
const FRONT = frontendPath(ID);
const PAGE = 4096;
const { Initialising, InitWait, Initialised, Connected, Closing, Closed } = XenbusState;

/** A store where dom0 gave domain 5 its home, owned by 5 and closed to others, and the device's directories. */
function world(): { store: XenStore; dom0: XenStoreConnection; domU: XenStoreConnection } {
  const store = new XenStore();
  const dom0 = store.connect(BACKEND);
  dom0.mkdir(`/local/domain/${GUEST}`);
  dom0.setPerms(`/local/domain/${GUEST}`, [{ domid: GUEST, access: "n" }]);
  createDevice(dom0, ID, { frontend: { "virtual-device": 51712, "device-type": "disk" } });
  return { store, dom0, domU: store.connect(GUEST) };
}

/**
 * A device pair that shares a real ring page and event channel: the frontend grants a page and
 * allocates a port; the backend maps the grant and binds the port named in xenstore.
 */
class Devices {
  readonly memory = new Uint8Array(4 * PAGE);
  readonly grants = new GrantTable({ domid: GUEST, memory: this.memory });
  readonly channels = new EventChannels();
  readonly calls: string[] = [];
  backendEvents = 0;
  connectError: Error | undefined;
  ring: GrantMapping | undefined;
  backendPort: number | undefined;
  frontendGrant: number | undefined;
  frontendPort: number | undefined;
  sectors: string | undefined;

  readonly backend: BackendDevice = {
    features: () => ({ "feature-flush-cache": 1, "max-ring-page-order": 4 }),
    connect: (frontend) => {
      this.calls.push("backend connect");
      if (this.connectError) throw this.connectError;
      const ref = Number(frontend.read("ring-ref"));
      const port = Number(frontend.read("event-channel"));
      this.ring = this.grants.map(BACKEND, ref, true);
      this.backendPort = this.channels.bindInterdomain(BACKEND, GUEST, port);
      this.channels.onEvent(BACKEND, this.backendPort, () => this.backendEvents++);
      return { sectors: 2048, "sector-size": 512, info: 0 };
    },
    disconnect: () => {
      this.calls.push("backend disconnect");
      this.ring?.unmap();
      this.ring = undefined;
      if (this.backendPort !== undefined) this.channels.close(BACKEND, this.backendPort);
      this.backendPort = undefined;
    },
  };

  readonly frontend: FrontendDevice = {
    initialise: (backend) => {
      this.calls.push(`frontend initialise (flush ${backend.read("feature-flush-cache")})`);
      this.frontendGrant = this.grants.grantAccess(BACKEND, 1, false);
      this.frontendPort = this.channels.allocUnbound(GUEST, BACKEND);
      return { "ring-ref": this.frontendGrant, "event-channel": this.frontendPort, protocol: "x86_64-abi" };
    },
    connect: (backend) => {
      this.calls.push("frontend connect");
      this.sectors = backend.read("sectors");
    },
    disconnect: () => {
      this.calls.push("frontend disconnect");
      if (this.frontendPort !== undefined) this.channels.close(GUEST, this.frontendPort);
      this.frontendPort = undefined;
    },
  };
}

/** Records every value each state node takes, as a dom0 watcher sees them. */
function recordStates(store: XenStore): { backend: number[]; frontend: number[] } {
  const seen = { backend: [] as number[], frontend: [] as number[] };
  const observer = store.connect(BACKEND);
  const record = (list: number[], path: string) => () => {
    const value = parseXenbusState(readOptional(observer, path));
    if (value === XenbusState.Unknown) return;
    if (list[list.length - 1] !== value) list.push(value);
  };
  observer.watch(`${BACK}/state`, "observer-back", record(seen.backend, `${BACK}/state`));
  observer.watch(`${FRONT}/state`, "observer-front", record(seen.frontend, `${FRONT}/state`));
  return seen;
}

/** A started backend and frontend; every error either reports lands in `errors`. */
async function connectedPair(devices = new Devices()): Promise<{
  store: XenStore; dom0: XenStoreConnection; domU: XenStoreConnection; devices: Devices;
  backend: XenbusBackend; frontend: XenbusFrontend; removed: () => boolean; errors: unknown[];
}> {
  const { store, dom0, domU } = world();
  let removed = false;
  const errors: unknown[] = [];
  const onError = (error: unknown) => errors.push(error);
  const backend = new XenbusBackend({ store: dom0, type: "vbd", frontendDomid: GUEST, devid: 51712, device: devices.backend, onError, onRemoved: () => (removed = true) });
  await backend.start();
  const frontend = new XenbusFrontend({ store: domU, type: "vbd", devid: 51712, device: devices.frontend, onError });
  frontend.start();
  return { store, dom0, domU, devices, backend, frontend, removed: () => removed, errors };
}

test("the state values equal those of Xen's io/xenbus.h", () => {
  if (!fs.existsSync(XENBUS_H)) {
    if (process.env.TANDEM_REQUIRE_XEN === "1") assert.unreachable(`${XENBUS_H} is missing but TANDEM_REQUIRE_XEN=1 (install libxen-dev)`);
    console.log(`  skip: xenbus.h values (no ${XENBUS_H}; install libxen-dev)`);
    return;
  }
  const header = fs.readFileSync(XENBUS_H, "utf8");
  const values = new Map([...header.matchAll(/XenbusState(\w+)\s*=\s*([0-9]+)/g)].map((m) => [m[1], Number(m[2])]));
  assert.is(values.size, 9, "nine states in the header");
  assert.equal(Object.fromEntries(values), { ...XenbusState });
});

test("state machines: the listed transitions, and every other one is E_INVALID_STATE", () => {
  assert.is(backendTransition(Initialising, "published"), InitWait);
  assert.is(backendTransition(InitWait, "connect"), Connected);
  assert.is(backendTransition(Connected, "close"), Closing);
  assert.is(backendTransition(Closing, "closed"), Closed);
  assert.is(backendTransition(Closed, "reconnect"), InitWait);
  assert.is(backendTransition(Closed, "unplug"), Closing);
  assert.is(frontendTransition(Closed, "start"), Initialising);
  assert.is(frontendTransition(Initialising, "initialise"), Initialised);
  assert.is(frontendTransition(Initialised, "connect"), Connected);
  assert.is(frontendTransition(Connected, "close"), Closing);
  assert.is(frontendTransition(Closing, "closed"), Closed);
  const backendEvents: BackendEvent[] = ["published", "connect", "close", "unplug", "closed", "reconnect"];
  const frontendEvents: FrontendEvent[] = ["start", "initialise", "connect", "close", "closed"];
  // From each state, the events whose transitions the docs list (docs/xenbus.md); all others must throw.
  const backendAllowed: Record<number, string[]> = {
    0: [], 1: ["published", "close", "unplug", "closed"], 2: ["connect", "close", "unplug", "closed"], 3: [],
    4: ["close", "unplug", "closed"], 5: ["unplug", "closed"], 6: ["unplug", "reconnect"], 7: [], 8: [],
  };
  const frontendAllowed: Record<number, string[]> = {
    0: ["start"], 1: ["initialise", "close", "closed"], 2: [], 3: ["connect", "close", "closed"],
    4: ["close", "closed"], 5: ["closed"], 6: ["start"], 7: [], 8: [],
  };
  for (const state of Object.values(XenbusState)) {
    for (const event of backendEvents) {
      const code = errorCode(() => backendTransition(state, event));
      assert.is(code, backendAllowed[state].includes(event) ? undefined : ErrorCode.InvalidState, `backend ${state} ${event}`);
    }
    for (const event of frontendEvents) {
      const code = errorCode(() => frontendTransition(state, event));
      assert.is(code, frontendAllowed[state].includes(event) ? undefined : ErrorCode.InvalidState, `frontend ${state} ${event}`);
    }
  }
  assert.is(parseXenbusState("4"), Connected);
  for (const junk of [undefined, "", "9", "04", " 4", "4\n", "-1", "Connected"]) assert.is(parseXenbusState(junk), XenbusState.Unknown, String(junk));
});

test("the toolstack creates both directories with libxl's permissions and keys", () => {
  const { store, dom0, domU } = world();
  assert.equal(dom0.getPerms(BACK), [{ domid: BACKEND, access: "n" }, { domid: GUEST, access: "r" }]);
  assert.equal(dom0.getPerms(FRONT), [{ domid: GUEST, access: "n" }, { domid: BACKEND, access: "r" }]);
  assert.equal(dom0.directory(BACK), ["frontend", "frontend-id", "online", "state"]);
  assert.is(dom0.readString(`${BACK}/frontend`), FRONT);
  assert.is(domU.readString(`${FRONT}/backend`), BACK);
  assert.is(domU.readString(`${FRONT}/backend-id`), "0");
  assert.is(domU.readString(`${FRONT}/virtual-device`), "51712");
  assert.is(domU.readString(`${BACK}/state`), "1", "the frontend may read the backend's directory");
  assert.is(errorCode(() => domU.write(`${BACK}/state`, "4")), ErrorCode.XsPermission, "but not write it");
  const other = store.connect(7);
  assert.is(errorCode(() => other.readString(`${FRONT}/state`)), ErrorCode.XsPermission, "a third domain sees neither");
  assert.is(errorCode(() => other.readString(`${BACK}/state`)), ErrorCode.XsPermission);
});

test("the full handshake: InitWait, Initialised, Connected, Connected, with a granted ring page and an event channel", async () => {
  const { store, dom0, devices, backend, frontend, errors } = await connectedPair();
  const seen = recordStates(store);
  await frontend.reached(Connected);
  await backend.reached(Connected);
  await until(() => seen.frontend.at(-1) === Connected && seen.backend.at(-1) === Connected);
  assert.equal(devices.calls, ["frontend initialise (flush 1)", "backend disconnect", "backend connect", "frontend connect"]);
  assert.is(dom0.readString(`${BACK}/max-ring-page-order`), "4");
  assert.is(dom0.readString(`${FRONT}/protocol`), "x86_64-abi");
  assert.is(devices.sectors, "2048", "the frontend read what the backend published with Connected");
  assert.equal(dom0.getPerms(`${FRONT}/ring-ref`), [{ domid: GUEST, access: "n" }, { domid: BACKEND, access: "r" }], "the frontend's keys inherit its directory's permissions");
  // The pieces meet: the backend writes into the granted page, the frontend kicks the backend.
  devices.ring!.write(0, Uint8Array.of(42));
  assert.is(devices.memory[PAGE], 42);
  devices.channels.notify(GUEST, devices.frontendPort!);
  await until(() => devices.backendEvents === 1);
  assert.equal(errors, []);
  backend.stop();
  frontend.stop();
});

test("states are written in protocol order, each side watching the other (the watch's first firing included)", async () => {
  const { store, dom0, domU } = world();
  const seen = recordStates(store);
  const devices = new Devices();
  // The frontend starts first: its first event sees the backend still Initialising and must wait.
  const frontend = new XenbusFrontend({ store: domU, type: "vbd", devid: 51712, device: devices.frontend });
  frontend.start();
  await new Promise((resolve) => setTimeout(resolve, 5));
  assert.is(frontend.state, Initialising);
  const backend = new XenbusBackend({ store: dom0, type: "vbd", frontendDomid: GUEST, devid: 51712, device: devices.backend });
  await backend.start();
  await frontend.reached(Connected);
  await until(() => seen.backend.at(-1) === Connected && seen.frontend.at(-1) === Connected);
  assert.equal(seen.backend, [Initialising, InitWait, Connected]);
  assert.equal(seen.frontend, [Initialising, Initialised, Connected]);
  assert.is(errorCode(() => frontend.start()), ErrorCode.InvalidState, "started twice");
  await backend.start().then(() => assert.unreachable("started twice"), (error) => assert.is(error.code, ErrorCode.InvalidState));
  backend.stop();
  frontend.stop();
});

test("disconnect from the frontend: Closing, Closing, Closed, Closed; the online backend waits, then serves a new frontend", async () => {
  const { store, domU, devices, backend, frontend, errors } = await connectedPair();
  await backend.reached(Connected);
  await frontend.reached(Connected);
  const seen = recordStates(store);
  await until(() => seen.backend.length === 1);
  frontend.close();
  await frontend.reached(Closed);
  await backend.reached(Closed);
  await until(() => seen.backend.at(-1) === Closed);
  assert.equal(seen.frontend, [Connected, Closing, Closed]);
  assert.equal(seen.backend, [Connected, Closing, Closed]);
  assert.is(devices.ring, undefined, "the backend unmapped the ring");
  devices.grants.endAccess(devices.frontendGrant!);
  await new Promise((resolve) => setTimeout(resolve, 5));
  assert.is(backend.state, Closed, "with online 1 the backend stays, Closed, until a new frontend comes");
  assert.not.ok(backend.removed);
  frontend.stop();

  // A new frontend instance (a driver reload) on the same directory.
  devices.calls.length = 0;
  const second = new XenbusFrontend({ store: domU, type: "vbd", devid: 51712, device: devices.frontend });
  second.start();
  await second.reached(Connected);
  await backend.reached(Connected);
  await until(() => seen.backend.at(-1) === Connected);
  assert.equal(seen.backend, [Connected, Closing, Closed, InitWait, Connected]);
  assert.equal(seen.frontend, [Connected, Closing, Closed, Initialising, Initialised, Connected]);
  assert.equal(devices.calls, ["frontend initialise (flush 1)", "backend disconnect", "backend connect", "frontend connect"]);
  assert.equal(errors, []);
  backend.stop();
  second.stop();
});

test("unplug writes online 0 and Closing in one transaction, retried on EAGAIN; the backend closes with the frontend and removes itself", async () => {
  const { store, dom0, devices, backend, frontend, removed, errors } = await connectedPair();
  await backend.reached(Connected);
  await frontend.reached(Connected);
  const seen = recordStates(store);
  await until(() => seen.backend.length === 1 && seen.frontend.length === 1);
  // A toolstack connection whose first commit meets a concurrent write to the backend's `online`.
  const toolstack = store.connect(BACKEND);
  const meddler = store.connect(BACKEND);
  let starts = 0;
  let commits = 0;
  const racing: XenbusStore = {
    domid: toolstack.domid,
    readString: (path, tx) => toolstack.readString(path, tx),
    write: (path, value, tx) => toolstack.write(path, value, tx),
    mkdir: (path, tx) => toolstack.mkdir(path, tx),
    rm: (path, tx) => toolstack.rm(path, tx),
    setPerms: (path, perms, tx) => toolstack.setPerms(path, perms, tx),
    transactionStart: () => (starts++, toolstack.transactionStart()),
    transactionEnd: (tx, commit) => {
      if (commits++ === 0) meddler.write(`${BACK}/online`, "1");
      toolstack.transactionEnd(tx, commit);
    },
    watch: (path, token, callback) => toolstack.watch(path, token, callback),
    unwatch: (path, token) => toolstack.unwatch(path, token),
  };
  unplugDevice(racing, ID);
  assert.equal([starts, commits], [2, 2], "the conflicting commit was retried");
  assert.is(dom0.readString(`${BACK}/online`), "0");
  assert.is(dom0.readString(`${BACK}/state`), String(Closing));
  await frontend.reached(Closed);
  await until(() => removed());
  assert.ok(backend.removed && backend.stopped);
  assert.is(errorCode(() => dom0.readString(`${BACK}/state`)), ErrorCode.XsNotFound, "the backend removed its directory");
  assert.equal(seen.backend, [Connected, Closing, Closed]);
  assert.equal(seen.frontend, [Connected, Closed]);
  assert.ok(devices.calls.includes("frontend disconnect") && devices.ring === undefined);
  removeDevice(dom0, ID);
  assert.is(errorCode(() => dom0.readString(FRONT)), ErrorCode.XsNotFound);
  await new Promise((resolve) => setTimeout(resolve, 5));
  assert.equal(errors, [], "the frontend reads the removed backend's state as Unknown (EACCES), not as an error");
});

test("unplug with no active frontend: Closing goes straight to Closed and the device is removed", async () => {
  const { dom0 } = world();
  const devices = new Devices();
  let removed = false;
  const backend = new XenbusBackend({ store: dom0, type: "vbd", frontendDomid: GUEST, devid: 51712, device: devices.backend, onRemoved: () => (removed = true) });
  await backend.start();
  await new Promise((resolve) => setTimeout(resolve, 5));
  assert.is(backend.state, InitWait, "the frontend never started");
  unplugDevice(dom0, ID);
  await until(() => removed);
  assert.is(backend.state, Closed);
  assert.ok(devices.calls.length > 0 && devices.calls.every((call) => call === "backend disconnect"), devices.calls.join());
});

test("a transaction that always conflicts gives up after its attempts with E_XS_CONFLICT", () => {
  const { store, dom0 } = world();
  const meddler = store.connect(BACKEND);
  let runs = 0;
  const code = errorCode(() =>
    inTransaction(dom0, (tx) => {
      runs++;
      dom0.readString(`${BACK}/online`, tx);
      meddler.write(`${BACK}/online`, String(runs));
    }, 3),
  );
  assert.is(code, ErrorCode.XsConflict);
  assert.is(runs, 3);
});

test("a backend whose connect fails writes the error node and closes; the frontend follows it to Closed", async () => {
  const devices = new Devices();
  devices.connectError = new Error("ring-ref 8 cannot be mapped");
  const { dom0, backend, frontend, errors } = await connectedPair(devices);
  await frontend.reached(Closed);
  await backend.reached(Closed);
  assert.is(dom0.readString("/local/domain/0/error/backend/vbd/5/51712/error"), "ring-ref 8 cannot be mapped");
  assert.is(errors.length, 1);
  assert.is((errors[0] as Error).message, "ring-ref 8 cannot be mapped");
  backend.stop();
  frontend.stop();
});

test("a backend starts only from Initialising; a frontend only with the toolstack's backend keys", async () => {
  const { dom0, domU } = world();
  const devices = new Devices();
  dom0.write(`${BACK}/state`, String(Connected));
  const backend = new XenbusBackend({ store: dom0, type: "vbd", frontendDomid: GUEST, devid: 51712, device: devices.backend });
  await backend.start().then(() => assert.unreachable("started from Connected"), (error) => assert.is(error.code, ErrorCode.InvalidState));
  domU.rm(`${FRONT}/backend`);
  const frontend = new XenbusFrontend({ store: domU, type: "vbd", devid: 51712, device: devices.frontend });
  assert.is(errorCode(() => frontend.start()), ErrorCode.InvalidState);
  assert.is(errorCode(() => new XenbusFrontend({ store: domU, type: "v/bd", devid: 1, device: devices.frontend })), ErrorCode.BadArgument);
  assert.is(errorCode(() => backendPath({ ...ID, frontendDomid: 0x8000 })), ErrorCode.BadArgument);
});

test("the connected device as Xen's xenstore-ls sees it through tandem xenstored", async () => {
  const XENSTORE_LS = "/usr/bin/xenstore-ls";
  if (!fs.existsSync(XENSTORE_LS)) {
    if (process.env.TANDEM_REQUIRE_XEN === "1") assert.unreachable(`${XENSTORE_LS} is missing but TANDEM_REQUIRE_XEN=1 (install xenstore-utils)`);
    console.log(`  skip: xenstore-ls view of the device (no ${XENSTORE_LS}; install xenstore-utils)`);
    return;
  }
  const { store, backend, frontend, errors } = await connectedPair();
  await backend.reached(Connected);
  await frontend.reached(Connected);
  const dir = fs.mkdtempSync(join(tmpdir(), "tandem-xenbus-"));
  const server = await serveXenStore(join(dir, "xs.sock"), { store });
  try {
    const ls = (path: string) =>
      new Promise<string>((resolve, reject) => {
        execFile(XENSTORE_LS, ["-f", path], { env: { ...process.env, XENSTORED_PATH: server.path }, timeout: 10_000 }, (error, stdout, stderr) => {
          if (error) reject(new Error(`xenstore-ls ${path}: ${String(stderr)}`));
          else resolve(String(stdout));
        });
      });
    const back = (await ls(BACK)).split("\n");
    for (const line of [`${BACK}/frontend = "${FRONT}"`, `${BACK}/online = "1"`, `${BACK}/state = "4"`, `${BACK}/feature-flush-cache = "1"`, `${BACK}/sectors = "2048"`]) {
      assert.ok(back.includes(line), `${line} in:\n${back.join("\n")}`);
    }
    const front = (await ls(FRONT)).split("\n");
    for (const line of [`${FRONT}/backend-id = "0"`, `${FRONT}/state = "4"`, `${FRONT}/event-channel = "1"`, `${FRONT}/protocol = "x86_64-abi"`]) {
      assert.ok(front.includes(line), `${line} in:\n${front.join("\n")}`);
    }
  } finally {
    await server.close();
    fs.rmSync(dir, { recursive: true, force: true });
    backend.stop();
    frontend.stop();
  }
  assert.equal(errors, []);
});

test.run();
