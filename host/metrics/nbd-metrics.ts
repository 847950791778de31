/**
 * The metrics of `tandem serve` (host/nbd/): connections, and requests by command with their
 * latency and errors. A request's latency is from the moment it was whole (its payload too) to
 * its reply: disks are synchronous, so that is the time the server spent on it.
 */

import { Counter, Gauge, Histogram } from "prom-client";
import { NBD_CMD_BLOCK_STATUS, NBD_CMD_CACHE, NBD_CMD_DISC, NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES } from "../nbd/protocol.ts";
import { ProcessMetrics } from "./process-metrics.ts";
import type { StatusReport } from "./status-report.ts";

/** The `command` label: the protocol's names, lower case (NBD_CMD_WRITE_ZEROES: "write_zeroes"). */
const COMMAND_NAMES: Readonly<Record<number, string>> = {
  [NBD_CMD_READ]: "read",
  [NBD_CMD_WRITE]: "write",
  [NBD_CMD_DISC]: "disc",
  [NBD_CMD_FLUSH]: "flush",
  [NBD_CMD_TRIM]: "trim",
  [NBD_CMD_CACHE]: "cache",
  [NBD_CMD_WRITE_ZEROES]: "write_zeroes",
  [NBD_CMD_BLOCK_STATUS]: "block_status",
};

/** 10 µs to 1 s: a 4 KiB read from the page cache to a flush of a large image. */
const LATENCY_BUCKETS = [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1];

/** What the metrics read from the running server. */
export interface NbdServerView {
  readonly uri: string;
  readonly connectionCount: number;
}

/** `tandem serve`'s metrics. */
export class NbdMetrics extends ProcessMetrics {
  #server: NbdServerView | undefined;
  #requests = 0;
  #errors = 0;
  readonly #accepted: Counter;
  readonly #requestCount: Counter<"command">;
  readonly #errorCount: Counter<"command">;
  readonly #latency: Histogram<"command">;

  constructor() {
    super("serve");
    const registers = [this.registry];
    const metrics = this;
    new Gauge({
      name: "tandem_nbd_connections", help: "NBD clients connected now.", registers,
      collect() {
        this.set(metrics.#server?.connectionCount ?? 0);
      },
    });
    this.#accepted = new Counter({ name: "tandem_nbd_connections_total", help: "NBD connections accepted.", registers });
    this.#requestCount = new Counter({ name: "tandem_nbd_requests_total", help: "NBD requests answered, by command.", labelNames: ["command"], registers });
    this.#errorCount = new Counter({ name: "tandem_nbd_request_errors_total", help: "NBD requests answered with an error, by command.", labelNames: ["command"], registers });
    this.#latency = new Histogram({ name: "tandem_nbd_request_seconds", help: "From a request being whole to its reply, by command.", labelNames: ["command"], buckets: LATENCY_BUCKETS, registers });
  }

  /** The server once it listens. */
  serving(server: NbdServerView): void {
    this.#server = server;
  }

  /** The server's `onConnection`. */
  readonly connection = (): void => {
    this.#accepted.inc();
  };

  /** The server's `onRequest`. */
  readonly request = (command: number, ms: number, failed: boolean): void => {
    const labels = { command: COMMAND_NAMES[command] ?? `unknown_${command}` };
    this.#requests++;
    this.#requestCount.inc(labels);
    this.#latency.observe(labels, ms / 1000);
    if (failed) {
      this.#errors++;
      this.#errorCount.inc(labels);
    }
  };

  override status(): StatusReport {
    return {
      ...super.status(),
      nbd: { uri: this.#server?.uri ?? "", connections: this.#server?.connectionCount ?? 0, requests: this.#requests, errors: this.#errors },
    };
  }
}
