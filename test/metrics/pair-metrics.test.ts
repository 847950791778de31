import { suite } from "uvu";
import * as assert from "uvu/assert";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { scrape, type Scrape } from "../support/prometheus.ts";
import { within } from "../support/session.ts";
import { runTandem, startTandem, type TandemProcess } from "../support/tandem-process.ts";

const test = suite("--metrics on a pair: primary and secondary scraped during replication and after a takeover, parsed by a real exposition-format parser (prom2javascript)");

const dir = mkdtempSync(join(tmpdir(), "tandem-metrics-"));
const GUEST = ["--guest", "reference", "--memory", "4"];
const started: TandemProcess[] = [];

/** The JSON lines `p` printed so far. */
function lines(p: TandemProcess): Record<string, unknown>[] {
  return p.stdout().split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** The metrics URL `p` announced. */
async function metricsUrl(p: TandemProcess): Promise<string> {
  await p.waitFor('"type":"metrics"', 60_000);
  return `${lines(p).find((l) => l.type === "metrics")!.url as string}/metrics`;
}

/** A histogram is well formed: cumulative buckets, +Inf equal to the count. */
function histogram(s: Scrape, name: string): { count: number; sum: number } {
  s.family(name, "histogram");
  const sample = s.sample(name);
  const bounds = Object.entries(sample.buckets!).map(([le, n]) => [le === "+Inf" ? Infinity : Number(le), n] as const).sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < bounds.length; i++) assert.ok(bounds[i][1] >= bounds[i - 1][1], `${name}: buckets are cumulative`);
  assert.is(bounds.at(-1)![0], Infinity);
  assert.is(bounds.at(-1)![1], sample.count, `${name}: +Inf counts every observation`);
  return { count: sample.count!, sum: sample.sum! };
}

test("the primary's and the standby's metrics say what the pair did, before and after a takeover", async () => {
  const socket = join(dir, "pair.sock");
  const secondary = startTandem(["secondary", "--listen", socket, "--heartbeat", "2000", "--metrics", "0", "--json", ...GUEST]);
  started.push(secondary);
  const secondaryUrl = await metricsUrl(secondary);
  await secondary.waitFor('"type":"listening"', 60_000);
  const primary = startTandem(["primary", "--connect", socket, "--interval", "50", "--metrics", "127.0.0.1:0", "--json", ...GUEST]);
  started.push(primary);
  const primaryUrl = await metricsUrl(primary);
  await primary.waitFor('"state":"protected"', 60_000);
  await primary.waitFor(/"type":"checkpoint","checkpoint":5,/, 60_000);

  // During replication. Lines printed before the scrape are a lower bound of what it counts.
  const printed = lines(primary).filter((l) => l.type === "checkpoint");
  const p = await scrape(primaryUrl);
  assert.match(p.contentType, /^text\/plain; version=0\.0\.4/);
  assert.is(p.value("tandem_info", { command: "primary" }), 1);
  assert.is(p.value("tandem_pair_state", { state: "protected" }), 1);
  assert.is(p.value("tandem_pair_state", { state: "alone" }), 0);
  assert.is(p.value("tandem_pair_protected"), 1);
  assert.is(p.value("tandem_pair_generation"), 1, "the first standby is generation 1");
  const checkpoints = p.value("tandem_checkpoints_total");
  assert.ok(checkpoints >= printed.length && checkpoints >= 5, `${checkpoints} checkpoints counted, ${printed.length} printed before`);
  assert.ok(p.value("tandem_last_checkpoint") >= (printed.at(-1)!.checkpoint as number));
  // A scrape collects one family after another while checkpoints go on: a family registered later
  // has seen at least as many, and a later scrape's counter at least as many as it.
  const later = await scrape(primaryUrl);
  const checkpointsLater = later.value("tandem_checkpoints_total");
  const between = (n: number, what: string) => assert.ok(n >= checkpoints && n <= checkpointsLater, `${what}: ${n}, not within [${checkpoints}, ${checkpointsLater}]`);
  const pause = histogram(p, "tandem_checkpoint_pause_seconds");
  between(pause.count, "one pause per checkpoint");
  assert.ok(pause.sum > 0 && pause.sum / pause.count < 5, `mean pause ${pause.sum / pause.count} s`);
  // The pauses the primary printed are among those observed: their sum is at most the histogram's.
  const printedPause = printed.reduce((n, l) => n + (l.pauseMs as number), 0) / 1000;
  assert.ok(printedPause <= pause.sum + 1e-9, `printed ${printedPause} s, observed ${pause.sum} s`);
  const bytes = histogram(p, "tandem_checkpoint_bytes");
  between(bytes.count, "bytes per checkpoint");
  const sent = p.value("tandem_checkpoint_sent_bytes_total"); // collected after the histogram
  assert.ok(sent >= bytes.sum && later.sample("tandem_checkpoint_bytes").sum! >= sent, `bytes per checkpoint add up to the bytes sent: ${bytes.sum}, ${sent}`);
  assert.ok(bytes.sum >= printed.reduce((n, l) => n + (l.bytes as number), 0));
  between(histogram(p, "tandem_checkpoint_dirty_pages").count, "dirty pages per checkpoint");
  between(histogram(p, "tandem_checkpoint_commit_seconds").count, "commit latency per checkpoint");
  assert.ok(p.value("tandem_held_output_bytes") >= 0);
  assert.is(p.value("tandem_takeovers_total"), 0);
  assert.is(p.family("tandem_checkpoints_total").type, "counter");

  const s = await scrape(secondaryUrl);
  assert.is(s.value("tandem_info", { command: "secondary" }), 1);
  assert.is(s.value("tandem_pair_state", { state: "standing-by" }), 1);
  assert.is(s.value("tandem_pair_generation"), 1, "the generation of the checkpoints it holds");
  const applied = s.value("tandem_standby_checkpoints_applied_total");
  assert.ok(applied >= 5, `${applied} checkpoints applied`);
  const applyTimes = histogram(s, "tandem_standby_apply_seconds").count;
  const appliedLater = (await scrape(secondaryUrl)).value("tandem_standby_checkpoints_applied_total");
  assert.ok(applyTimes >= applied && applyTimes <= appliedLater, `one apply time per checkpoint applied: ${applyTimes}, not within [${applied}, ${appliedLater}]`);
  assert.is(s.value("tandem_takeovers_total"), 0);
  assert.is(s.value("tandem_checkpoints_total"), 0, "a standby commits nothing");

  // tandem status says the same, on both.
  const primaryStatus = await runTandem(["status", primaryUrl.replace(/\/metrics$/, "")], 30_000);
  assert.is(primaryStatus.code, 0, primaryStatus.stderr);
  assert.match(primaryStatus.stdout, /^primary, pid \d+/);
  assert.match(primaryStatus.stdout, /pair +PROTECTED: .* \(generation 1\)/);
  assert.match(primaryStatus.stdout, /checkpoints \d+ committed/);
  const standbyStatus = await runTandem(["status", secondaryUrl.replace(/\/metrics$/, ""), "--json"], 30_000);
  const report = JSON.parse(standbyStatus.stdout) as { kind: string; pair: { state: string; applied: number; protected: boolean } };
  assert.is(report.kind, "secondary");
  assert.is(report.pair.state, "standing-by");
  assert.not.ok(report.pair.protected);
  assert.ok(report.pair.applied >= applied);

  // The primary dies; the standby takes over.
  primary.signal("SIGKILL");
  await secondary.waitFor('"type":"takeover"', 60_000);
  const takeover = lines(secondary).find((l) => l.type === "takeover")!;
  const after = await scrape(secondaryUrl);
  assert.is(after.value("tandem_takeovers_total"), 1);
  assert.is(after.value("tandem_pair_state", { state: "standing-by" }), 0);
  assert.is(after.value("tandem_pair_state", { state: "alone" }) + after.value("tandem_pair_state", { state: "syncing" }), 1,
    "running the guest, waiting for (or syncing) a new standby");
  assert.is(after.value("tandem_pair_protected"), 0, "no standby holds this guest now");
  assert.ok(Math.abs(after.value("tandem_failover_seconds") - (takeover.failoverMs as number) / 1000) < 1e-9, "the failover time it printed");
  assert.ok(after.value("tandem_pair_generation") >= 2, "a takeover raises the generation");
  assert.ok(after.value("tandem_standby_checkpoints_applied_total") >= applied);
  const tookOver = await runTandem(["status", secondaryUrl.replace(/\/metrics$/, "")], 30_000);
  assert.match(tookOver.stdout, /^secondary, pid \d+/);
  assert.match(tookOver.stdout, /pair +(ALONE|SYNCING): /);
  assert.match(tookOver.stdout, /takeovers +1/);

  secondary.signal("SIGTERM");
  const { code } = await within(secondary.exited, 20_000, "the secondary stops on SIGTERM");
  assert.ok(code === 0 || code === null, secondary.stderr());
  // Its endpoint went with it.
  const refused = await fetch(secondaryUrl, { signal: AbortSignal.timeout(5000) }).then(() => false, () => true);
  assert.ok(refused, "nothing answers at its metrics address after it stopped");
});

test.after(async () => {
  for (const p of started) p.signal("SIGKILL");
  await Promise.all(started.map((p) => within(p.exited, 10_000, "a child exits")));
  rmSync(dir, { recursive: true, force: true });
});

test.run();
