/**
 * Environment variables, read the same way on Node, Deno and Bun. Deno exposes `process`
 * only in Node-compatibility contexts, so its own API is tried first; a missing permission
 * reads as unset rather than throwing.
 */

interface DenoEnv {
  env: { get(name: string): string | undefined };
}
interface NodeProcess {
  env: Record<string, string | undefined>;
}

/** The value of environment variable `name`, or undefined if unset or unreadable. */
export function getEnv(name: string): string | undefined {
  const deno = (globalThis as { Deno?: DenoEnv }).Deno;
  try {
    if (deno) return deno.env.get(name);
    return (globalThis as { process?: NodeProcess }).process?.env[name];
  } catch {
    return undefined;
  }
}
