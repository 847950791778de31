/**
 * etcd (Debian's etcd-server) for the witness tests. Tests that need it call {@link etcdTest}:
 * where etcd is missing the test is skipped with a notice, except when TANDEM_REQUIRE_ETCD=1
 * (set by .ci/run), where a missing etcd fails.
 */

import { etcdAvailable } from "../../host/witness/local-etcd.ts";

/** Whether an etcd test may run; throws if etcd is required (CI) and missing. */
export function etcdTest(name: string): boolean {
  if (etcdAvailable()) return true;
  if (process.env.TANDEM_REQUIRE_ETCD === "1") {
    throw new Error(`${name}: etcd not found, and TANDEM_REQUIRE_ETCD=1: install Debian's etcd-server`);
  }
  console.log(`  (skipped ${name}: etcd not installed; install Debian's etcd-server to run it)`);
  return false;
}

/** A guest name no other test uses. */
export function uniqueGuest(label: string): string {
  return `${label}-${Date.now().toString(36)}-${Math.floor(Math.random() * 1e6)}`;
}
