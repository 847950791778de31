/**
 * The guests the CLI runs: the built-in guest (guest/counter) in v86, the default, or the
 * reference machine (host/machine/reference-machine.ts), which needs no emulator. Both print
 * `counter N` once a tick and `disk errors N` once their disk read-back check has failed, so the
 * commands judge either from its released output alone ({@link CounterLog}).
 */

import { V86Machine } from "../emulators/v86/v86-machine.ts";
import { ErrorCode, TandemError } from "../errors.ts";
import type { Machine } from "../machine/machine.ts";
import { MemoryDisk } from "../machine/memory-disk.ts";
import { ReferenceMachine } from "../machine/reference-machine.ts";
import { choice, flag, number, type OptionValues } from "./options.ts";

/** The guests the CLI builds. */
const GUEST_NAMES = ["v86", "reference"] as const;

/** Options every command that builds a guest takes; both sides of a pair must use the same. */
export const GUEST_OPTIONS = {
  guest: choice("NAME", "v86: the built-in guest in the v86 PC emulator;\nreference: the reference machine in TypeScript (no emulator)", GUEST_NAMES, { default: "v86" }),
  memory: number("MIB", "guest RAM in MiB", { integer: true, min: 4, max: 1920, default: 32 }),
  dirty: number("F", "fraction of RAM pages the guest writes per tick", { min: 0, max: 1, default: 0.001 }),
  hz: number("N", "v86 guest ticks per second", { integer: true, min: 1, max: 1000, default: 20 }),
  json: flag("print JSON, one object a line"),
} as const;

/** The values of {@link GUEST_OPTIONS} that build the guest. */
export type GuestValues = Pick<OptionValues<typeof GUEST_OPTIONS>, "guest" | "memory" | "dirty" | "hz">;

/** A machine the CLI built, and how to let it go. */
export interface CliGuest {
  machine: Machine;
  /** Stops the guest for good (v86: frees the emulator). */
  close(): Promise<void>;
  /** The options, as arguments, that build the same guest in another process. */
  args: string[];
  /** Whether two saves of the paused machine's device state are byte for byte equal (for digests). */
  stableDevices: boolean;
}

/**
 * Builds the guest the options name. --dirty is the fraction of RAM pages written per tick
 * (the reference machine ticks every millisecond, the v86 guest --hz times a second).
 */
export async function guestFrom(values: GuestValues): Promise<CliGuest> {
  const { memory: mib, dirty, hz } = values;
  const args = ["--guest", values.guest, "--memory", String(mib), "--dirty", String(dirty), "--hz", String(hz)];
  const pages = (mib << 20) / 4096;
  const dirtyPages = Math.round(pages * dirty);
  if (values.guest === "reference") {
    const machine = new ReferenceMachine({ memoryBytes: mib << 20, dirtyPages: Math.max(1, dirtyPages), tickMs: 1 });
    return { machine, args, stableDevices: true, close: async () => machine.pause() };
  }
  if (values.guest === "v86") {
    // The guest stamps sectors 0..255: a 256 KiB disk holds them, and is cheap to hash per checkpoint.
    const machine = await V86Machine.create({ memoryBytes: mib << 20, cmdline: `hz=${hz} dirty=${dirtyPages} disk=1`, disk: new MemoryDisk(256 * 1024) });
    return { machine, args, stableDevices: false, close: () => machine.destroy() };
  }
  throw new TandemError(ErrorCode.BadArgument, `--guest ${values.guest}: v86 (the built-in guest in v86) or reference (no emulator)`);
}

/**
 * What a guest's released output says: its counter lines and disk-error reports. Outputs are a
 * byte stream (an output may end mid-line, where a checkpoint cut it), so lines are re-joined.
 */
export class CounterLog {
  /** Counters in the order they were seen. */
  readonly counters: number[] = [];
  /** The highest disk-error count the guest reported. */
  diskErrors = 0;
  #partial = "";

  /** Reads the next output, in order. */
  see(text: string): void {
    const lines = (this.#partial + text).split("\n");
    this.#partial = lines.pop()!;
    for (const line of lines) {
      const counter = /^counter (\d+)$/.exec(line);
      if (counter) this.counters.push(Number(counter[1]));
      const errors = /^disk errors (\d+)$/.exec(line);
      if (errors) this.diskErrors = Math.max(this.diskErrors, Number(errors[1]));
    }
  }

  /** The last counter seen, or 0. */
  get last(): number {
    return this.counters.at(-1) ?? 0;
  }
}
