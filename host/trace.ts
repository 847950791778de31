/**
 * Trace points, off by default, in the spirit of QEMU's trace-events: `TANDEM_TRACE=protocol`
 * (a comma-separated list of categories, or `*` / `1` for all) prints one line per event to
 * stderr: `tandem:trace <ms> <category>.<event> key=value ...`.
 *
 * A component asks once for its category's tracer and calls it as `trace?.("event", {...})`:
 * when tracing is off the tracer is undefined and the optional call does not even build its
 * arguments, so trace points cost one check.
 */

import { getEnv } from "./runtime/env.ts";

/** Trace categories. */
export type TraceCategory = "protocol" | "transport";

/** Emits one trace event. */
export type Tracer = (event: string, fields?: Record<string, string | number | boolean | undefined>) => void;

/** Where trace lines go; replaceable for tests. */
export type TraceSink = (line: string) => void;

const start = performance.now();
let sink: TraceSink = (line) => console.error(line);
let categories = parse(getEnv("TANDEM_TRACE"));

function parse(value: string | undefined): Set<string> {
  return new Set((value ?? "").split(",").map((s) => s.trim()).filter(Boolean));
}

/** The tracer of `category`, or undefined when that category is off. */
export function tracerFor(category: TraceCategory): Tracer | undefined {
  if (!categories.has(category) && !categories.has("*") && !categories.has("1")) return undefined;
  return (event, fields = {}) => {
    const pairs = Object.entries(fields).map(([k, v]) => `${k}=${v}`).join(" ");
    sink(`tandem:trace ${(performance.now() - start).toFixed(3)} ${category}.${event}${pairs ? ` ${pairs}` : ""}`);
  };
}

/**
 * Turns tracing on for `enabled` categories with lines going to `to` (for tests and embedders);
 * tracers made afterwards use it. With no arguments, restores the environment's setting.
 */
export function configureTracing(enabled?: string, to?: TraceSink): void {
  categories = parse(enabled ?? getEnv("TANDEM_TRACE"));
  sink = to ?? ((line) => console.error(line));
}
