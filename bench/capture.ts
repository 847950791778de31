/**
 * Part of `npm run bench -- replication`: the checkpoint capture alone, in this process, against
 * a memcpy of the same bytes, side by side (bench/timing.ts race). The guest is the replication
 * bench's (256 MiB, one step dirtying 10% of its pages, scattered, untimed before each capture).
 * A capture is what the primary does while the guest is paused: collect the dirty log, gather the
 * pages into stream records with the zero ones flagged, add the device state, end the checkpoint.
 * The memcpy copies that many bytes from a 256 MiB buffer at a rotating offset (contiguous, so
 * it is the faster of the two: it has no scattered pages to find).
 */

import { ReferenceMachine } from "../host/machine/reference-machine.ts";
import { PAGE_SIZE } from "../host/memory/guest-memory.ts";
import { StreamWriter } from "../host/protocol/stream/writer.ts";
import { MemoryCapture } from "../host/replication/capture.ts";
import type { Progress } from "./memory.ts";
import { race } from "./timing.ts";

const MIB = 256;

/** capture_vs_memcpy_10pct (memcpy time / capture time) and both rates in GB/s. */
export function captureVsMemcpy(progress: Progress): Record<string, number> {
  const pages = (MIB << 20) / PAGE_SIZE;
  const dirty = Math.round(pages * 0.1);
  const machine = new ReferenceMachine({ memoryBytes: MIB << 20, dirtyPages: dirty, stepsPerTick: 0 });
  machine.step(50); // pages hold data, as in the replication runs
  const capture = new MemoryCapture(machine);
  const writer = new StreamWriter({ pageSize: PAGE_SIZE, regions: [{ size: MIB << 20 }] });
  writer.writeHeader();
  capture.arm();
  capture.capture(writer); // the first, full capture
  writer.takeView();
  let captured = 0;
  let checkpoint = 0;
  const source = new Uint8Array(MIB << 20).fill(1);
  const target = new Uint8Array(dirty * PAGE_SIZE).fill(1);
  let copies = 0;
  const times = race([
    {
      name: "capture",
      setup: () => machine.step(1),
      run: () => {
        captured = capture.capture(writer).pages;
        writer.deviceState(0, machine.saveDevices());
        writer.checkpointEnd(++checkpoint, 1);
        writer.takeView();
      },
    },
    {
      name: "memcpy",
      run: () => {
        const at = (copies++ % 8) * (MIB << 17);
        target.set(source.subarray(at, at + target.length));
      },
    },
  ], { warmup: 10, rounds: 60, onRound: (r) => progress(`capture against memcpy, round ${r + 1}/70`) });
  return {
    capture_vs_memcpy_10pct: times.memcpy / times.capture,
    capture_inprocess_gbps_10pct: (captured * PAGE_SIZE) / times.capture / 1e6,
    memcpy_gbps: target.length / times.memcpy / 1e6,
  };
}
