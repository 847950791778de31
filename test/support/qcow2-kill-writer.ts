/**
 * The writer that test/qcow2-crash.test.ts kills with SIGKILL: opens a qcow2 image and applies
 * the deterministic workload of {@link killWorkload}, flushing every `flushEvery` operations and
 * printing `flushed N` (N operations are durable) after each flush. It does nothing unless
 * TANDEM_QCOW2_KILL_WRITER=1, so importing it by mistake is harmless.
 *
 *   TANDEM_QCOW2_KILL_WRITER=1 <runtime> test/support/qcow2-kill-writer.ts IMAGE SEED FLUSH_EVERY OPERATIONS
 */

import { openDisk } from "../../host/disk/registry.ts";
import { killWorkload } from "./qcow2-kill-workload.ts";

if (process.env.TANDEM_QCOW2_KILL_WRITER === "1") {
  const [image, seed, flushEvery, operations] = process.argv.slice(2);
  const disk = openDisk(image);
  const ops = killWorkload(Number(seed), disk.size, Number(operations));
  for (let i = 0; i < ops.length; i++) {
    const op = ops[i];
    if (op.kind === "write") disk.write(op.offset, op.data);
    else disk.discard(op.offset, op.data.length);
    if ((i + 1) % Number(flushEvery) === 0) {
      disk.flush();
      process.stdout.write(`flushed ${i + 1}\n`);
    }
  }
  disk.close();
  process.stdout.write("done\n");
}
