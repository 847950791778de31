/**
 * `npm run bench -- <suite> [--json]`. With --json, prints one JSON object
 * {"suite", "runtime", "metrics"}; otherwise a table. Progress goes to stderr on a terminal.
 * Ratios are measured within one run, side by side, so machine noise cancels out of them.
 */

import { runtimeName } from "../host/runtime/runtime.ts";
import { runBlkifSuite } from "./blkif.ts";
import { runDiskSuite } from "./disk.ts";
import { runLinuxSuite } from "./linux.ts";
import { runDiskReplicationSuite } from "./disk-replication.ts";
import { runMemorySuite, type Progress } from "./memory.ts";
import { runNbdSuite } from "./nbd.ts";
import { runNetSuite } from "./net.ts";
import { runProtocolSuite } from "./protocol.ts";
import { runReplicationSuite } from "./replication.ts";
import { runV86Suite } from "./v86.ts";
import { runWitnessSuite } from "./witness.ts";

type Metrics = Record<string, number>;
const SUITES: Record<string, (progress: Progress) => Metrics | Promise<Metrics>> = {
  blkif: runBlkifSuite,
  disk: runDiskSuite,
  linux: runLinuxSuite,
  "disk-replication": runDiskReplicationSuite,
  memory: runMemorySuite,
  nbd: runNbdSuite,
  net: runNetSuite,
  protocol: runProtocolSuite,
  replication: runReplicationSuite,
  v86: runV86Suite,
  witness: runWitnessSuite,
};

const args = process.argv.slice(2);
const json = args.includes("--json");
const names = args.filter((a) => !a.startsWith("--"));
const unknown = names.filter((n) => !(n in SUITES));
if (names.length !== 1 || unknown.length > 0) {
  console.error(`usage: npm run bench -- <suite> [--json]; suites: ${Object.keys(SUITES).join(", ")}`);
  process.exit(2);
}
const suite = names[0];
const tty = process.stderr.isTTY === true;
const progress: Progress = (message) => {
  if (tty) process.stderr.write(`\r\x1b[K${suite}: ${message}`);
};
const metrics = await SUITES[suite](progress);
if (tty) process.stderr.write("\r\x1b[K");
const runtime = runtimeName();
if (json) {
  console.log(JSON.stringify({ suite, runtime, metrics }));
} else {
  console.log(`${suite} suite on ${runtime}`);
  const width = Math.max(...Object.keys(metrics).map((k) => k.length));
  for (const [name, value] of Object.entries(metrics)) console.log(`  ${name.padEnd(width)}  ${value.toFixed(3)}`);
}
