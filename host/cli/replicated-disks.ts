/**
 * The image files of a pair's two hosts, as the CLI opens them (docs/replication.md, "Disks"):
 * the primary's writable images each keep a change log beside them (IMAGE.tandem-changes), so a
 * standby that held a checkpoint of them before needs only the blocks changed since; the
 * standby's images each keep a record and a journal beside them, so checkpoints land all or
 * nothing and a restarted standby knows which checkpoint its image holds.
 */

import type { Disk } from "../disk/disk.ts";
import type { DiskSlot } from "../emulators/v86/v86-identity.ts";
import type { Machine } from "../machine/machine.ts";
import { ChangeLog, ChangeLoggedDisk, changeLogPath } from "../replication/change-log.ts";
import { DiskReplica } from "../replication/disk-replica.ts";

/** How a side opens each writable image: the hook `guestFrom` takes as `disk`. */
export type DiskHook = (slot: DiskSlot | "data", path: string, image: Disk) => Disk;

/** The primary's images, each with its change log. */
export function primaryDisks(): { hook: DiskHook } {
  return { hook: (_slot, path, image) => new ChangeLoggedDisk(image, ChangeLog.open(changeLogPath(path), image.size)) };
}

/** The standby's images, each a replica with its record and journal. */
export interface StandbyImages {
  hook: DiskHook;
  /** The replicas by the machine's disk index (undefined for a disk that is no image of this side's). */
  forMachine(machine: Machine): (DiskReplica | undefined)[];
  /** Closes the records (the images close with the guest). */
  close(): void;
}

/** Opens the standby's images as replicas: a crash-interrupted checkpoint is finished or dropped now. */
export function standbyDisks(): StandbyImages {
  const replicas: DiskReplica[] = [];
  return {
    hook: (_slot, path, image) => {
      const replica = DiskReplica.attach(path, image);
      replicas.push(replica);
      return replica.disk;
    },
    forMachine: (machine) => machine.disks.map((disk) => replicas.find((r) => r.disk === disk)),
    close: () => {
      for (const replica of replicas) replica.close();
    },
  };
}
