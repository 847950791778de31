/**
 * The standby of the replication bench, in its own process:
 *   replication-peer.ts <memory MiB> <dirty pages per step>
 * Prints `PORT <n>` when listening, then one JSON line with the standby's result, and exits.
 */

import { ReferenceMachine } from "../host/machine/reference-machine.ts";
import { listen, type SocketTransport } from "../host/protocol/socket-transport.ts";
import { standby } from "../host/replication/secondary.ts";

const [mib, dirty] = process.argv.slice(2).map(Number);
const machine = new ReferenceMachine({ memoryBytes: mib << 20, dirtyPages: dirty, stepsPerTick: 0 });
let accept!: (t: SocketTransport) => void;
const accepted = new Promise<SocketTransport>((resolve) => (accept = resolve));
const server = await listen({ port: 0 }, (t) => accept(t));
console.log(`PORT ${"port" in server.address ? server.address.port : 0}`);
const transport = await accepted;
void server.close();
try {
  const result = await standby(machine, transport, { heartbeatTimeoutMs: 1000 }).promise;
  console.log(JSON.stringify(result));
} catch (error) {
  console.log(JSON.stringify({ error: (error as Error).message }));
}
machine.pause();
process.exit(0);
