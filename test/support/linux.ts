/**
 * The Linux guest for tests: its built files, or undefined with a notice when it is not built
 * here (a test then skips). With TANDEM_REQUIRE_LINUX=1 (CI builds the guest) absence fails.
 */

import { linuxGuestFiles, type LinuxGuestFiles } from "../../host/guests/linux-guest.ts";

export const LINUX_REQUIRED = globalThis.process?.env?.TANDEM_REQUIRE_LINUX === "1";

/** The built guest, or undefined (after saying why) so the caller can skip. */
export function linuxGuestOrSkip(what: string): LinuxGuestFiles | undefined {
  try {
    return linuxGuestFiles();
  } catch (error) {
    if (LINUX_REQUIRED) throw new Error(`${(error as Error).message}, and TANDEM_REQUIRE_LINUX=1`);
    console.log(`  skipping ${what}: ${(error as Error).message}`);
    return undefined;
  }
}
