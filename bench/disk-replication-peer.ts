/**
 * The standby of the disk replication bench, in its own process:
 *   disk-replication-peer.ts IMAGE MEMORY_MIB DIRTY_PAGES DISK_EVERY   (the primary's machine options)
 * Opens IMAGE as a replica (recovering what a kill interrupted), prints `PORT <n>` when
 * listening, stands by, then prints one JSON line with the standby's result and exits.
 */

import { ReferenceMachine } from "../host/machine/reference-machine.ts";
import { listen, type SocketTransport } from "../host/protocol/socket-transport.ts";
import { DiskReplica } from "../host/replication/disk-replica.ts";
import { standby } from "../host/replication/secondary.ts";

const [image, mib, dirty, diskEvery] = process.argv.slice(2);
const replica = DiskReplica.open(image);
const machine = new ReferenceMachine({ memoryBytes: Number(mib) << 20, dirtyPages: Number(dirty), diskEvery: Number(diskEvery), stepsPerTick: 0, disk: replica.disk });
let accept!: (t: SocketTransport) => void;
const accepted = new Promise<SocketTransport>((resolve) => (accept = resolve));
const server = await listen({ port: 0 }, (t) => accept(t));
console.log(`PORT ${"port" in server.address ? server.address.port : 0}`);
const transport = await accepted;
void server.close();
try {
  const result = await standby(machine, transport, { disks: [replica], heartbeatTimeoutMs: 60_000, resume: false }).promise;
  console.log(JSON.stringify(result));
} catch (error) {
  console.log(JSON.stringify({ error: (error as Error).message }));
}
replica.close();
process.exit(0);
