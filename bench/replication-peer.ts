/**
 * The standby of the replication benches, in its own process:
 *   replication-peer.ts <memory MiB> <dirty pages per step>      a reference machine
 *   replication-peer.ts v86 <memory MiB> <cmdline>               a v86 machine (built-in guest)
 *   replication-peer.ts linux <memory MiB> <data disk image>     tandem's Linux guest (guest/linux/)
 * Prints `PORT <n>` when listening, then one JSON line with the standby's result, and exits.
 * The v86 standby is built with the primary's options (memory and command line, default disk),
 * as v86 requires; it is destroyed before the process exits.
 */

import { openDisk } from "../host/disk/registry.ts";
import { V86Machine } from "../host/emulators/v86/v86-machine.ts";
import { linuxGuestFiles, linuxMachineOptions } from "../host/guests/linux-guest.ts";
import type { Machine } from "../host/machine/machine.ts";
import { ReferenceMachine } from "../host/machine/reference-machine.ts";
import { listen, type SocketTransport } from "../host/protocol/socket-transport.ts";
import { standby } from "../host/replication/secondary.ts";

const argv = process.argv.slice(2);
let machine: Machine;
let heartbeatTimeoutMs = 1000;
let dispose = async () => {};
if (argv[0] === "v86") {
  const v86 = await V86Machine.create({ memoryBytes: Number(argv[1]) << 20, cmdline: argv[2] });
  machine = v86;
  dispose = () => v86.destroy();
  // The v86 bench pauses the primary between checkpoints to time save_state, for seconds on a
  // loaded machine at 1 GiB: not a death.
  heartbeatTimeoutMs = 60_000;
} else if (argv[0] === "linux") {
  const files = linuxGuestFiles();
  const disk = openDisk(argv[2], { format: "raw" });
  const linux = await V86Machine.create(linuxMachineOptions(files, "bzimage", { data: disk }, Number(argv[1]) << 20));
  machine = linux;
  dispose = async () => {
    await linux.destroy();
    disk.close();
  };
  // A loaded machine can stall a Linux primary for seconds (its first checkpoint pauses it so).
  heartbeatTimeoutMs = 30_000;
} else {
  const [mib, dirty] = argv.map(Number);
  const reference = new ReferenceMachine({ memoryBytes: mib << 20, dirtyPages: dirty, stepsPerTick: 0 });
  machine = reference;
  dispose = async () => reference.pause();
}
let accept!: (t: SocketTransport) => void;
const accepted = new Promise<SocketTransport>((resolve) => (accept = resolve));
const server = await listen({ port: 0 }, (t) => accept(t));
console.log(`PORT ${"port" in server.address ? server.address.port : 0}`);
const transport = await accepted;
void server.close();
try {
  const result = await standby(machine, transport, { heartbeatTimeoutMs }).promise;
  console.log(JSON.stringify(result));
} catch (error) {
  console.log(JSON.stringify({ error: (error as Error).message }));
}
await dispose();
process.exit(0);
