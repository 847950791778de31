/**
 * qemu-img and qemu-io (Debian's qemu-utils) as the independent judge of tandem's images.
 *
 * Tests that need them call {@link qemuTest}: where the tools are missing the test is skipped
 * with a notice, except when TANDEM_REQUIRE_QEMU=1 (set by .ci/run), where a missing tool fails.
 */

import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** What a qemu tool printed and how it exited. */
export interface QemuResult {
  status: number;
  stdout: string;
  stderr: string;
}

let available: boolean | undefined;

/** True if qemu-img and qemu-io run here. */
export function qemuAvailable(): boolean {
  if (available === undefined) {
    available = ["qemu-img", "qemu-io"].every((tool) => spawnSync(tool, ["--version"], { encoding: "utf8" }).status === 0);
  }
  return available;
}

/**
 * Whether a qemu test may run: true if the tools are here; false (with a notice) if not and not
 * required; throws if required (CI) and missing.
 */
export function qemuTest(name: string): boolean {
  if (qemuAvailable()) return true;
  if (process.env.TANDEM_REQUIRE_QEMU === "1") {
    throw new Error(`${name}: qemu-img/qemu-io not found, and TANDEM_REQUIRE_QEMU=1: install Debian's qemu-utils`);
  }
  console.log(`  (skipped ${name}: qemu-img/qemu-io not installed; install qemu-utils to run it)`);
  return false;
}

/** Runs `tool` with `args`; never throws on a non-zero exit (the caller asserts on `status`). */
export function runQemu(tool: "qemu-img" | "qemu-io", args: readonly string[]): QemuResult {
  const result = spawnSync(tool, args, { encoding: "utf8", timeout: 120_000 });
  if (result.error) throw result.error;
  return { status: result.status ?? -1, stdout: result.stdout, stderr: result.stderr };
}

/** Runs qemu-img and fails (with its output) unless it exits 0. */
export function qemuImg(...args: string[]): string {
  const result = runQemu("qemu-img", args);
  if (result.status !== 0) throw new Error(`qemu-img ${args.join(" ")} exited ${result.status}: ${result.stderr || result.stdout}`);
  return result.stdout;
}

/** Runs qemu-io on `image` with commands (`-c` each) and fails unless it exits 0 without an error line. */
export function qemuIo(image: string, commands: readonly string[], options: { format?: string } = {}): string {
  const args = [...(options.format ? ["-f", options.format] : []), ...commands.flatMap((c) => ["-c", c]), image];
  const result = runQemu("qemu-io", args);
  if (result.status !== 0 || /error|failed/i.test(result.stderr + result.stdout)) {
    throw new Error(`qemu-io ${args.join(" ")} exited ${result.status}: ${result.stderr || result.stdout}`);
  }
  return result.stdout;
}

/** `qemu-img check --output=json` of `image`: its exit status and parsed report. */
export function qemuCheck(image: string): { status: number; report: Record<string, unknown> } {
  const result = runQemu("qemu-img", ["check", "--output=json", image]);
  let report: Record<string, unknown> = {};
  try {
    report = JSON.parse(result.stdout) as Record<string, unknown>;
  } catch {
    report = { unparsed: result.stdout, stderr: result.stderr };
  }
  return { status: result.status, report };
}

/** One extent of `qemu-img map --output=json`. */
export interface QemuMapExtent {
  start: number;
  length: number;
  depth: number;
  present?: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

/** `qemu-img map --output=json` of `image`. */
export function qemuMap(image: string): QemuMapExtent[] {
  return JSON.parse(qemuImg("map", "--output=json", image)) as QemuMapExtent[];
}

/** A fresh temporary directory, and a function that removes it. */
export function tempDir(prefix: string): { dir: string; path: (name: string) => string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), `tandem-${prefix}-`));
  return { dir, path: (name) => join(dir, name), remove: () => rmSync(dir, { recursive: true, force: true }) };
}
