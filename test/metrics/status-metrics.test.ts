import { suite } from "uvu";
import * as assert from "uvu/assert";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { XenStoreClient } from "../../host/xen/xenstore/client.ts";
import { scrape } from "../support/prometheus.ts";
import { qemuTest, runQemu } from "../support/qemu.ts";
import { within } from "../support/session.ts";
import { hasStackTrace, runTandem, startTandem, type TandemProcess } from "../support/tandem-process.ts";

const test = suite("--metrics on serve and xenstored (requests, errors, transactions, EAGAIN, watches) and `tandem status` on each");

const dir = mkdtempSync(join(tmpdir(), "tandem-status-"));
const started: TandemProcess[] = [];

/** The metrics URL a serve or xenstored logged ("... metrics: http://127.0.0.1:PORT/metrics"). */
async function metricsBase(p: TandemProcess): Promise<string> {
  await p.waitFor(/metrics: http:\/\/\S+\/metrics/, 60_000);
  return /metrics: (http:\/\/\S+)\/metrics/.exec(p.stderr())![1];
}

async function stop(p: TandemProcess): Promise<void> {
  p.signal("SIGTERM");
  await within(p.exited, 20_000, "it stops on SIGTERM");
}

test("serve --metrics counts a real client's requests by command, with latency and errors; status says so", async () => {
  if (!qemuTest("serve --metrics")) return;
  const image = join(dir, "disk.raw");
  writeFileSync(image, new Uint8Array(1 << 20));
  const socket = join(dir, "nbd.sock");
  const serve = startTandem(["serve", image, "--socket", socket, "--metrics", "0"]);
  started.push(serve);
  const base = await metricsBase(serve);
  await serve.waitFor("listening", 60_000);
  // Two writes, two reads and a flush, by qemu-io over NBD.
  const io = runQemu("qemu-io", ["-f", "raw",
    "-c", "write -P 0xab 0 4k", "-c", "write -P 0xcd 8k 4k", "-c", "read -P 0xab 0 4k", "-c", "read -P 0xcd 8k 4k", "-c", "flush",
    `nbd+unix:///?socket=${socket}`]);
  assert.is(io.status, 0, io.stderr);
  const s = await scrape(`${base}/metrics`);
  assert.is(s.value("tandem_info", { command: "serve" }), 1);
  assert.is(s.value("tandem_nbd_requests_total", { command: "write" }), 2);
  assert.is(s.value("tandem_nbd_requests_total", { command: "read" }), 2);
  assert.ok(s.value("tandem_nbd_requests_total", { command: "flush" }) >= 1);
  assert.is(s.value("tandem_nbd_connections_total"), 1);
  const writes = s.sample("tandem_nbd_request_seconds", { command: "write" });
  assert.is(s.family("tandem_nbd_request_seconds").type, "histogram");
  assert.is(writes.count, 2, "a latency per write");
  assert.ok(writes.sum! > 0);
  assert.is(s.sample("tandem_nbd_request_seconds", { command: "read" }).count, 2);
  assert.is(s.series("tandem_nbd_request_errors_total").filter((m) => m.value! > 0).length, 0, "nothing failed");

  const status = await runTandem(["status", base], 30_000);
  assert.is(status.code, 0, status.stderr);
  assert.match(status.stdout, /^serve, pid \d+/);
  assert.match(status.stdout, `nbd+unix:///?socket=${socket}`);
  assert.match(status.stdout, /requests +\d+, 0 answered with an error/);
  const json = await runTandem(["status", base.replace("http://", ""), "--json"], 30_000);
  const report = JSON.parse(json.stdout) as { kind: string; pid: number; nbd: { requests: number } };
  assert.is(report.kind, "serve");
  assert.is(report.pid, serve.child.pid);
  assert.ok(report.nbd.requests >= 5);
  await stop(serve);
});

test("xenstored --metrics counts transactions, their EAGAIN retries and watches; status says so", async () => {
  const socket = join(dir, "xs.sock");
  const daemon = startTandem(["xenstored", "--socket", socket, "--metrics", "127.0.0.1:0"]);
  started.push(daemon);
  const base = await metricsBase(daemon);
  await daemon.waitFor("listening", 60_000);
  const a = await XenStoreClient.connect(socket);
  const b = await XenStoreClient.connect(socket);
  try {
    await a.write("/test/value", "1");
    await a.watch("/test", "t1");
    // A transaction whose node another client changes before it ends: EAGAIN, as in xenstored.
    const tx = await a.transactionStart();
    await a.readString("/test/value", tx);
    await a.write("/test/value", "2", tx);
    await b.write("/test/value", "3");
    const ended = await a.transactionEnd(tx, true).then(() => "committed", (error: Error) => error.message);
    assert.match(ended, "EAGAIN");
    const open = await b.transactionStart();

    const s = await scrape(`${base}/metrics`);
    assert.is(s.value("tandem_info", { command: "xenstored" }), 1);
    assert.is(s.value("tandem_xenstore_connections"), 2);
    assert.is(s.value("tandem_xenstore_connections_total"), 2);
    assert.is(s.value("tandem_xenstore_transactions_total"), 2);
    assert.is(s.value("tandem_xenstore_transaction_eagain_total"), 1);
    assert.is(s.value("tandem_xenstore_transactions_open"), 1);
    assert.is(s.value("tandem_xenstore_watches"), 1);
    assert.is(s.value("tandem_xenstore_requests_total", { type: "write" }), 3);
    assert.is(s.value("tandem_xenstore_request_errors_total", { type: "transaction_end", errno: "EAGAIN" }), 1);

    const status = await runTandem(["status", base], 30_000);
    assert.is(status.code, 0, status.stderr);
    assert.match(status.stdout, /^xenstored, pid \d+/);
    assert.match(status.stdout, /clients +2 connected/);
    assert.match(status.stdout, /1 transactions open, 1 watches/);
    await b.transactionEnd(open, false);
  } finally {
    a.close();
    b.close();
  }
  await stop(daemon);
});

test("status where nothing listens: a coded error naming the address and what to start, exit 1, no stack", async () => {
  const r = await runTandem(["status", "127.0.0.1:1"], 30_000);
  assert.is(r.code, 1, r.stderr);
  assert.match(r.stderr, "E_PEER_LOST");
  assert.match(r.stderr, "http://127.0.0.1:1/status");
  assert.not.ok(hasStackTrace(r.stderr), r.stderr);
  const bad = await runTandem(["status", "nowhere:port"], 30_000);
  assert.is(bad.code, 2, bad.stderr);
  assert.match(bad.stderr, "E_BAD_ARGUMENT");
});

test.after(async () => {
  for (const p of started) p.signal("SIGKILL");
  await Promise.all(started.map((p) => within(p.exited, 10_000, "a child exits")));
  rmSync(dir, { recursive: true, force: true });
});

test.run();
