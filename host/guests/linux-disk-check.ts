/**
 * Judges a Linux guest's ext4 data disk the way an administrator would after a crash, with
 * e2fsprogs and no loop mount: on a copy, `e2fsck -p` replays the journal and fixes what a crash
 * may leave (orphan inodes), then `e2fsck -fn` must find no error; `debugfs rdump` then copies
 * /data out, and every file whose checksum the guest released must be there with that checksum.
 */

import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ErrorCode, TandemError } from "../errors.ts";

/** The verdict on a data disk. */
export interface LinuxDiskVerdict {
  /** `e2fsck -fn` found no error once the journal was replayed. */
  fsck_clean: boolean;
  /** e2fsck's own words when it was not clean. */
  fsck_output?: string;
  /** Released files checked. */
  files_checked: number;
  /** Released files not on the disk. */
  files_missing: number[];
  /** Released files on the disk with other contents. */
  files_wrong: number[];
  ok: boolean;
}

function tool(command: string, args: string[]): { status: number; output: string } {
  const r = spawnSync(command, args, { encoding: "utf8", maxBuffer: 64 << 20 });
  if (r.error) {
    const missing = (r.error as NodeJS.ErrnoException).code === "ENOENT";
    throw new TandemError(ErrorCode.Failed, missing ? `${command} is not installed; on Debian: sudo apt-get install e2fsprogs` : `cannot run ${command}: ${r.error.message}`);
  }
  return { status: r.status ?? -1, output: `${r.stdout}${r.stderr}` };
}

/** Checks the raw ext4 image at `image` (left untouched) against the checksums the guest released. */
export function checkLinuxDisk(image: string, released: ReadonlyMap<number, string>): LinuxDiskVerdict {
  const dir = mkdtempSync(join(tmpdir(), "tandem-linux-disk-"));
  try {
    const copy = join(dir, "data.img");
    copyFileSync(image, copy);
    // -p: replay the journal and make the fixes a crash calls for; 0, 1 (fixed) and 2 (fixed, reboot) are fine.
    const preen = tool("e2fsck", ["-p", copy]);
    const check = tool("e2fsck", ["-fn", copy]);
    const clean = preen.status <= 2 && check.status === 0;
    const dump = tool("debugfs", ["-R", `rdump /data ${dir}`, copy]);
    if (dump.status !== 0) throw new TandemError(ErrorCode.Failed, `debugfs could not read /data: ${dump.output}`);
    const missing: number[] = [];
    const wrong: number[] = [];
    for (const [n, sha] of released) {
      const file = join(dir, "data", `f${n}`);
      if (!existsSync(file)) missing.push(n);
      else if (createHash("sha256").update(readFileSync(file)).digest("hex") !== sha) wrong.push(n);
    }
    return {
      fsck_clean: clean,
      ...(clean ? {} : { fsck_output: `${preen.output}\n${check.output}`.trim() }),
      files_checked: released.size,
      files_missing: missing,
      files_wrong: wrong,
      ok: clean && missing.length === 0 && wrong.length === 0,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
