/**
 * One side of a replicated pair in its own process, for the kill tests. It connects to the test
 * at 127.0.0.1:PORT and runs until killed (SIGKILL), printing what the test needs:
 *
 *   peer-child.ts standby IMAGE PORT [readonly]   opens its image (recovering what a kill
 *     interrupted), prints "open <state> <checkpoint>", stands by, prints how it ended.
 *   peer-child.ts primary IMAGE PORT SNAPDIR      runs the guest on IMAGE (with its change log);
 *     at every checkpoint it writes the disk as of that checkpoint to SNAPDIR/N.raw (the last 64
 *     kept) before the checkpoint is sent, and prints "protected N" when first protected.
 */

import { readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ReferenceMachine } from "../../host/machine/reference-machine.ts";
import { connect } from "../../host/protocol/socket-transport.ts";
import { DiskReplica } from "../../host/replication/disk-replica.ts";
import { replicate } from "../../host/replication/primary.ts";
import { standby } from "../../host/replication/secondary.ts";
import { CHILD_MACHINE, WRITING_MACHINE, openPrimaryImage } from "./support.ts";

const [role, image, port, extra] = process.argv.slice(2);
const transport = await connect({ port: Number(port) });
if (role === "standby") {
  const replica = DiskReplica.open(image, { readOnly: extra === "readonly" });
  console.log(`open ${replica.record.state} ${replica.record.checkpoint}`);
  const machine = new ReferenceMachine({ ...CHILD_MACHINE, disk: replica.disk });
  try {
    const result = await standby(machine, transport, { disks: [replica], resume: false, heartbeatTimeoutMs: 60_000 }).promise;
    console.log(`ended ${result.outcome}`);
  } catch (error) {
    console.log(`failed ${(error as { code?: string }).code} ${(error as Error).message}`);
  }
  replica.close();
} else {
  const disk = openPrimaryImage(image);
  const machine = new ReferenceMachine({ ...WRITING_MACHINE, disk });
  let announced = false;
  machine.resume();
  await replicate(machine, transport, {
    intervalMs: 10,
    onSuspended: (n) => {
      writeFileSync(join(extra, `${n}.raw`), disk.read(0, disk.size));
      for (const name of readdirSync(extra)) if (Number(name.split(".")[0]) < n - 64) rmSync(join(extra, name), { force: true });
    },
    onCommitted: (s) => {
      if (s.protected && !announced) {
        announced = true;
        console.log(`protected ${s.checkpoint}`);
      }
    },
  }).promise.catch((error: Error) => console.log(`failed ${error.message}`));
}
process.exit(0);
