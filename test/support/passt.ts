/**
 * passt (Debian's passt) as the network of network tests. Tests that need it call
 * {@link passtTest}: where passt is missing the test is skipped with a notice, except when
 * TANDEM_REQUIRE_PASST=1 (set by .ci/run), where a missing passt fails.
 */

import { spawnSync } from "node:child_process";

let available: boolean | undefined;

/** True if passt runs here. */
export function passtAvailable(): boolean {
  if (available === undefined) {
    const result = spawnSync("passt", ["--help"], { encoding: "utf8" });
    available = result.error === undefined;
  }
  return available;
}

/** Whether a passt test may run; throws if passt is required (CI) and missing. */
export function passtTest(name: string): boolean {
  if (passtAvailable()) return true;
  if (process.env.TANDEM_REQUIRE_PASST === "1") {
    throw new Error(`${name}: passt not found, and TANDEM_REQUIRE_PASST=1: install Debian's passt`);
  }
  console.log(`  (skipped ${name}: passt not installed; install Debian's passt to run it)`);
  return false;
}
