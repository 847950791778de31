import { suite } from "uvu";
import * as assert from "uvu/assert";
import { existsSync } from "node:fs";
import { changeLogPath } from "../../host/replication/change-log.ts";
import { recordPath } from "../../host/replication/disk-record.ts";
import { qemuCheck, qemuImg, qemuTest, tempDir } from "../support/qemu.ts";
import { startTandem, type TandemProcess } from "../support/tandem-process.ts";
import { until } from "../support/session.ts";

const test = suite("tandem primary --hda and secondary --hda: each host's own image file, from the command line");
const GUEST = ["--guest", "reference", "--memory", "4", "--dirty", "0.01", "--json"];

/** The JSON lines a tandem process printed so far, parsed as they come. */
const parsed = new WeakMap<TandemProcess, Record<string, unknown>[]>();
function watch(p: TandemProcess): TandemProcess {
  const list: Record<string, unknown>[] = [];
  parsed.set(p, list);
  let partial = "";
  p.child.stdout!.on("data", (chunk: Uint8Array) => {
    const lines = (partial + new TextDecoder().decode(chunk)).split("\n");
    partial = lines.pop()!;
    for (const line of lines) {
      try {
        list.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // not JSON: a line for people
      }
    }
  });
  return p;
}
function events(p: TandemProcess): Record<string, unknown>[] {
  return parsed.get(p) ?? [];
}

function states(p: TandemProcess): string[] {
  return events(p).filter((e) => e.type === "pair").map((e) => e.state as string);
}

function lastCopyMode(p: TandemProcess): string | undefined {
  const checkpoints = events(p).filter((e) => e.type === "checkpoint");
  const copy = checkpoints.at(-1)?.diskCopy as { mode: string }[] | undefined;
  return copy?.[0]?.mode;
}

/** Every released counter line, by seq, from every host: one text per seq, and none missing. */
function outputsAgree(hosts: TandemProcess[]): { seqs: number; gapless: boolean; conflicts: number; diskErrors: number } {
  const seen = new Map<number, string>();
  let conflicts = 0;
  let diskErrors = 0;
  for (const host of hosts) {
    for (const e of events(host)) {
      if (e.type !== "output") continue;
      const text = e.text as string;
      const before = seen.get(e.seq as number);
      if (before !== undefined && before !== text) conflicts++;
      seen.set(e.seq as number, text);
      const errors = /disk errors (\d+)/.exec(text);
      if (errors) diskErrors = Math.max(diskErrors, Number(errors[1]));
    }
  }
  const seqs = [...seen.keys()].sort((a, b) => a - b);
  return { seqs: seqs.length, gapless: seqs.every((seq, i) => seq === i + 1), conflicts, diskErrors };
}

test("a standby killed and restarted on its image gets only the changes; the primary killed, the standby's image runs on, and qemu-img finds it clean", async () => {
  if (!qemuTest("the CLI's replicated images")) return;
  const t = tempDir("tandem-cli-disks-");
  const hosts: TandemProcess[] = [];
  try {
    const primaryImage = t.path("vm.qcow2");
    const standbyImage = t.path("replica.qcow2");
    qemuImg("create", "-q", "-f", "qcow2", primaryImage, "1M");
    qemuImg("create", "-q", "-f", "qcow2", standbyImage, "1M");
    const address = t.path("primary.sock");
    const primary = watch(startTandem(["primary", ...GUEST, "--hda", primaryImage, "--listen", address, "--interval", "20"]));
    hosts.push(primary);
    await primary.waitFor('"type":"listening"', 60_000);
    const first = watch(startTandem(["secondary", ...GUEST, "--hda", standbyImage, "--join", address]));
    hosts.push(first);
    await until(() => states(primary).includes("protected"), 60_000);
    assert.is(lastCopyMode(primary), "full", "a new standby image gets a full copy");
    assert.ok(existsSync(changeLogPath(primaryImage)), "the primary's image keeps a change log beside it");
    assert.ok(existsSync(recordPath(standbyImage)), "the standby's image keeps a record beside it");

    first.signal("SIGKILL");
    await first.exited;
    await until(() => states(primary).at(-1) === "alone", 30_000);
    const second = watch(startTandem(["secondary", ...GUEST, "--hda", standbyImage, "--join", address]));
    hosts.push(second);
    await until(() => states(primary).filter((s) => s === "protected").length >= 2, 60_000);
    assert.is(lastCopyMode(primary), "changes", "the same standby image, restarted, gets only the blocks changed since its checkpoint");

    primary.signal("SIGKILL");
    await primary.exited;
    await until(() => events(second).some((e) => e.type === "takeover"), 30_000);
    const atTakeover = events(second).length;
    await until(() => events(second).length > atTakeover + 50, 30_000); // the guest runs on, on the standby's image
    second.signal("SIGTERM");
    const ended = await second.exited;
    assert.is(ended.code, 0, `the new primary stops cleanly on SIGTERM: ${second.stderr()}`);

    const agreed = outputsAgree(hosts);
    assert.is(agreed.conflicts, 0, "no seq said two different things");
    assert.ok(agreed.gapless, `outputs 1..${agreed.seqs}, none missing, across both failures`);
    assert.is(agreed.diskErrors, 0, "the guest never read back a lost write from its image");
    assert.is(qemuCheck(standbyImage).status, 0, "qemu-img check finds the image that ran on clean");
  } finally {
    for (const host of hosts) host.signal("SIGKILL");
    await Promise.all(hosts.map((h) => h.exited));
    t.remove();
  }
});

test.run();
