/**
 * What every tandem process's metrics start from: a registry of its own (never prom-client's
 * global one, so that several commands run in one process, as the tests do, keep theirs apart),
 * `tandem_info` and `tandem_start_time_seconds`, and the common part of its status report.
 */

import { Gauge, Registry } from "prom-client";
import { runtimeName, runtimeVersion } from "../runtime/runtime.ts";
import { VERSION } from "../wasm/embedded.generated.ts";
import type { ProcessKind, StatusReport } from "./status-report.ts";

/** A process's registry and identity. */
export class ProcessMetrics {
  readonly registry = new Registry();
  readonly kind: ProcessKind;
  readonly #started = Date.now();

  constructor(kind: ProcessKind) {
    this.kind = kind;
    new Gauge({
      name: "tandem_info",
      help: "Always 1; the labels say which tandem command, version and runtime this process is.",
      labelNames: ["command", "version", "runtime"],
      registers: [this.registry],
    }).set({ command: kind, version: VERSION, runtime: runtimeName() }, 1);
    new Gauge({ name: "tandem_start_time_seconds", help: "When the process started, in seconds since the Unix epoch.", registers: [this.registry] })
      .set(this.#started / 1000);
  }

  /** The common part of the status report. */
  status(): StatusReport {
    return {
      kind: this.kind,
      pid: process.pid,
      version: VERSION,
      runtime: `${runtimeName()} ${runtimeVersion()}`,
      startedAt: new Date(this.#started).toISOString(),
      uptimeSeconds: (Date.now() - this.#started) / 1000,
    };
  }
}
