import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode } from "../../host/errors.ts";
import { createImage } from "../../host/disk/registry.ts";
import { ReferenceMachine } from "../../host/machine/reference-machine.ts";
import { listen, type SocketTransport } from "../../host/protocol/socket-transport.ts";
import { DiskRecordState } from "../../host/replication/disk-record.ts";
import { DiskReplica } from "../../host/replication/disk-replica.ts";
import { replicate, type CheckpointStats } from "../../host/replication/primary.ts";
import { standby } from "../../host/replication/secondary.ts";
import { seededRandom } from "../../host/prng.ts";
import { selfCommand } from "../../host/runtime/self-command.ts";
import { qemuCheck, qemuTest, runQemu } from "../support/qemu.ts";
import { rejectionCode, until } from "../support/session.ts";
import { CHILD_MACHINE, WRITING_MACHINE, WritingMachine, makeImage, openPrimaryImage, tempDir } from "./support.ts";

const test = suite("disk replication: either side killed (SIGKILL) at random moments; qemu-img judges the images");
const SIZE = 4 << 20;
const CHILD = fileURLToPath(new URL("./peer-child.ts", import.meta.url));
const KILLS = Number(process.env.TANDEM_DISK_KILLS ?? 20);

/** Starts a peer process; `lines` collects what it prints. */
function startPeer(args: string[]): { child: ChildProcess; lines: string[]; exited: Promise<void> } {
  const [command, ...rest] = selfCommand(CHILD, args);
  const child = spawn(command, rest, { stdio: ["ignore", "pipe", "inherit"] });
  const lines: string[] = [];
  let text = "";
  child.stdout!.on("data", (chunk: Uint8Array) => {
    text += new TextDecoder().decode(chunk);
    const parts = text.split("\n");
    text = parts.pop() ?? "";
    lines.push(...parts);
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  return { child, lines, exited };
}

/** A TCP listener on loopback whose connections are taken one at a time. */
async function listener() {
  const waiting: ((t: SocketTransport) => void)[] = [];
  const ready: SocketTransport[] = [];
  const server = await listen({ host: "127.0.0.1", port: 0 }, (t) => {
    const take = waiting.shift();
    if (take) take(t);
    else ready.push(t);
  });
  return {
    port: (server.address as { port: number }).port,
    next: () => new Promise<SocketTransport>((resolve) => {
      const t = ready.shift();
      if (t) resolve(t);
      else waiting.push(resolve);
    }),
    close: () => server.close(),
  };
}

/** Checks `image` with qemu-img: no errors (leaked clusters are allowed: a kill may leak some). */
function assertClean(image: string, label: string): void {
  const check = qemuCheck(image);
  assert.ok(check.status === 0 || check.status === 3, `${label}: qemu-img check exited ${check.status}: ${JSON.stringify(check.report)}`);
  assert.is(check.report["check-errors"] ?? 0, 0, `${label}: qemu-img check found errors`);
}

/** `qemu-img compare` of a raw snapshot and a qcow2 image. */
function assertSame(raw: string, image: string, label: string): void {
  const result = runQemu("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", raw, image]);
  assert.is(result.status, 0, `${label}: qemu-img compare: ${result.stdout}${result.stderr}`);
}

test(`the standby killed at random moments (${KILLS} times): it restarts holding exactly the checkpoint its record names, and rejoins with the changes only`, async () => {
  if (!qemuTest("standby kills")) return;
  const dir = tempDir();
  const random = seededRandom(17);
  const server = await listener();
  try {
    makeImage(join(dir, "vm.qcow2"), SIZE, 0.6, 11);
    createImage(join(dir, "replica.qcow2"), "qcow2", { size: SIZE });
    const disk = openPrimaryImage(join(dir, "vm.qcow2"));
    const primary = new WritingMachine({ ...CHILD_MACHINE, disk });
    const snapshots = new Map<number, Uint8Array>();
    primary.resume();
    // The guest writes 4 KiB blocks at random, several per millisecond, all along.
    const writer = setInterval(() => {
      for (let i = 0; i < 4; i++) primary.guestWrite(Math.floor(random() * (SIZE / 4096)) * 4096, new Uint8Array(4096).fill(1 + Math.floor(random() * 255)));
    }, 1);
    let compared = 0;
    let midApply = 0;
    const modes: string[] = [];
    try {
      for (let trial = 0; trial < KILLS; trial++) {
        const peer = startPeer(["standby", join(dir, "replica.qcow2"), String(server.port)]);
        const transport = await server.next();
        const stats: CheckpointStats[] = [];
        const rep = replicate(primary, transport, {
          intervalMs: 10,
          onSuspended: (n) => {
            snapshots.set(n, disk.read(0, SIZE));
            snapshots.delete(n - 200);
          },
          onCommitted: (s) => stats.push(s),
        });
        // A few kills land during the copy; most after it, while checkpoints are applied.
        if (trial % 5 === 4) await until(() => stats.length >= 1, 30_000);
        else await until(() => stats.some((s) => s.protected), 30_000);
        await new Promise((r) => setTimeout(r, random() * 200));
        peer.child.kill("SIGKILL");
        await peer.exited;
        assert.is(await rejectionCode(rep.promise), ErrorCode.PeerLost, `trial ${trial}: the primary sees its standby gone`);
        assert.ok(primary.running, `trial ${trial}: the primary runs on alone`);
        modes.push(stats[stats.length - 1]?.diskCopy[0]?.mode ?? "?");

        const replica = DiskReplica.open(join(dir, "replica.qcow2")); // recovery, as the next start does
        const record = replica.record;
        if (replica.recovery.outcome !== "none") midApply++;
        replica.close();
        assertClean(join(dir, "replica.qcow2"), `trial ${trial}`);
        if (record.state === DiskRecordState.Replica) {
          const snapshot = snapshots.get(record.checkpoint);
          assert.ok(snapshot, `trial ${trial}: the record names checkpoint ${record.checkpoint}, which the primary captured`);
          writeFileSync(join(dir, "snapshot.raw"), snapshot!);
          assertSame(join(dir, "snapshot.raw"), join(dir, "replica.qcow2"), `trial ${trial} (checkpoint ${record.checkpoint})`);
          compared++;
        } else {
          assert.ok(trial % 5 === 4 || record.state === DiskRecordState.CatchingUp, `trial ${trial}: a protected standby killed later holds a checkpoint (state ${record.state})`);
        }
      }
    } finally {
      clearInterval(writer);
      primary.pause();
      disk.close();
    }
    console.log(`  ${KILLS} kills: ${compared} images compared equal to the checkpoint their record names, ${midApply} killed inside a journal apply; copies: ${modes.join(" ")}`);
    assert.ok(compared >= KILLS / 2, `${compared} of ${KILLS} kills left a replica to compare`);
    assert.ok(modes.filter((m) => m === "changes").length >= KILLS / 2, `rejoins copied only the changes: ${modes.join(" ")}`);
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the primary killed at random moments: the standby takes over holding exactly the checkpoint taken over", async () => {
  if (!qemuTest("primary kills")) return;
  const dir = tempDir();
  const random = seededRandom(23);
  const server = await listener();
  const trials = Math.max(3, Math.round(KILLS / 4));
  try {
    makeImage(join(dir, "vm.qcow2"), SIZE, 0.6, 13);
    createImage(join(dir, "replica.qcow2"), "qcow2", { size: SIZE });
    for (let trial = 0; trial < trials; trial++) {
      const snaps = join(dir, `snaps-${trial}`);
      mkdirSync(snaps);
      const peer = startPeer(["primary", join(dir, "vm.qcow2"), String(server.port), snaps]);
      const transport = await server.next();
      const replica = DiskReplica.open(join(dir, "replica.qcow2"));
      const machine = new ReferenceMachine({ ...WRITING_MACHINE, disk: replica.disk });
      const sb = standby(machine, transport, { disks: [replica], resume: false, heartbeatTimeoutMs: 5000 });
      await until(() => peer.lines.some((l) => l.startsWith("protected")), 30_000);
      await new Promise((r) => setTimeout(r, 20 + random() * 300));
      peer.child.kill("SIGKILL");
      await peer.exited;
      const result = await sb.promise;
      assert.is(result.outcome, "takeover", `trial ${trial}`);
      assert.is(replica.record.state, DiskRecordState.TookOver, `trial ${trial}: the record says the image runs as a primary now`);
      replica.close();
      assertClean(join(dir, "replica.qcow2"), `trial ${trial}`);
      const snapshot = join(snaps, `${result.checkpoint}.raw`);
      assert.ok(existsSync(snapshot), `trial ${trial}: the primary captured checkpoint ${result.checkpoint}`);
      assertSame(snapshot, join(dir, "replica.qcow2"), `trial ${trial} (checkpoint ${result.checkpoint})`);
    }
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
