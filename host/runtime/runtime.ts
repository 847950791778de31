/** Which JavaScript runtime tandem is running on; benches and the self-test report it. */

/** The runtimes tandem supports. */
export type RuntimeName = "node" | "deno" | "bun";

interface Versions {
  node?: string;
  deno?: string;
  bun?: string;
}

function versions(): Versions {
  return (globalThis as { process?: { versions?: Versions } }).process?.versions ?? {};
}

/** The runtime's name (Deno and Bun also report a Node version, so they are tested first). */
export function runtimeName(): RuntimeName {
  const v = versions();
  if ("Deno" in globalThis || v.deno) return "deno";
  if (v.bun) return "bun";
  return "node";
}

/** The runtime's own version string. */
export function runtimeVersion(): string {
  const deno = (globalThis as { Deno?: { version: { deno: string } } }).Deno;
  if (deno) return deno.version.deno;
  const v = versions();
  return v.bun ?? v.node ?? "unknown";
}
