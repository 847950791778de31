/**
 * What the replication engine needs from an emulator (docs/architecture.md, "Machine"). An
 * adapter per emulator implements it (host/emulators/); host/machine/reference-machine.ts is the
 * built-in one that needs no emulator.
 */

import type { DirtyLog } from "../memory/dirty-log.ts";
import type { GuestMemory } from "../memory/guest-memory.ts";
import type { GuestIdentity } from "./guest-identity.ts";

/** Something the guest sent to the outside world: held by the engine until its checkpoint commits. */
export interface MachineOutput {
  /** Where it goes, e.g. "serial0". */
  channel: string;
  /** The bytes. */
  data: Uint8Array;
}

/** A disk whose writes travel in checkpoints. */
export interface MachineDisk {
  /** Bytes. */
  readonly size: number;
  /** True when the disk refuses writes; an emulator must then keep its guest's writes away from it. */
  readonly readOnly?: boolean;
  /** A copy of `length` bytes at `offset`. */
  read(offset: number, length: number): Uint8Array;
  /** Writes `data` at `offset` (the engine does this on a standby, while paused). */
  write(offset: number, data: Uint8Array): void;
}

/** An emulator, as the replication engine sees it. */
export interface Machine {
  /** Guest RAM, by region; a region's index is its number in the checkpoint stream. */
  readonly memory: readonly GuestMemory[];
  /**
   * Per region, the dirty log the emulator marks on every write, armed and collected by the
   * engine; undefined for a region whose writes the emulator cannot report (the engine then
   * detects changes itself).
   */
  readonly dirtyLogs: readonly (DirtyLog | undefined)[];
  /** Disks whose writes travel in checkpoints, by index. */
  readonly disks: readonly MachineDisk[];
  /**
   * What the machine was built from (guest-identity.ts), sent in the stream header: a standby,
   * restore or migration destination whose identity differs refuses the stream at connect and
   * names the fields that differ. Undefined if the adapter cannot say; then only the memory
   * layout is checked.
   */
  readonly identity?: GuestIdentity;
  /** True while the guest runs. */
  readonly running: boolean;
  /** Stops the guest: once it settles, nothing in RAM, devices or disks changes until resume. */
  pause(): void | Promise<void>;
  /** Lets the guest run on. */
  resume(): void | Promise<void>;
  /** The device state (everything but RAM and disks) as bytes; only while paused. */
  saveDevices(): Uint8Array;
  /** Restores device state saved by an identically configured machine; only while paused. */
  restoreDevices(state: Uint8Array): void;
  /** Sets where the guest's outputs go (the engine holds them until their checkpoint commits). */
  onOutput(sink: (output: MachineOutput) => void): void;
  /** Sets where the guest's disk writes are reported, after they are applied to the disk. */
  onDiskWrite(sink: (disk: number, offset: number, data: Uint8Array) => void): void;
}
