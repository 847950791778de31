/**
 * The metrics of `tandem xenstored` (host/xen/xenstore/): connections, requests by type,
 * transactions and the EAGAIN answers to their ends (each one a client's retry of the whole
 * transaction), and the watches held. Counted from each request and its reply as the server
 * sends them, and from the store's own counts.
 */

import { Counter, Gauge } from "prom-client";
import { XsType, bytesToText, type XsMessage } from "../xen/xenstore/wire.ts";
import { ProcessMetrics } from "./process-metrics.ts";
import type { StatusReport } from "./status-report.ts";

/** The `type` label: xs_wire's names, lower case ("transaction_start"). */
const TYPE_NAMES: Readonly<Record<number, string>> = Object.fromEntries(
  Object.entries(XsType).map(([name, type]) => [type, name.replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase()]),
);

/** What the metrics read from the running daemon. */
export interface XenStoreServerView {
  readonly path: string;
  readonly connectionCount: number;
  readonly store: { readonly openTransactions: number; readonly watchCount: number };
}

/** `tandem xenstored`'s metrics. */
export class XenStoreMetrics extends ProcessMetrics {
  #server: XenStoreServerView | undefined;
  readonly #accepted: Counter;
  readonly #requests: Counter<"type">;
  readonly #errors: Counter<"type" | "errno">;
  readonly #transactions: Counter;
  readonly #eagain: Counter;

  constructor() {
    super("xenstored");
    const registers = [this.registry];
    const metrics = this;
    new Gauge({
      name: "tandem_xenstore_connections", help: "xenstore clients connected now.", registers,
      collect() {
        this.set(metrics.#server?.connectionCount ?? 0);
      },
    });
    new Gauge({
      name: "tandem_xenstore_transactions_open", help: "Transactions open now.", registers,
      collect() {
        this.set(metrics.#server?.store.openTransactions ?? 0);
      },
    });
    new Gauge({
      name: "tandem_xenstore_watches", help: "Watches held now, over every connection.", registers,
      collect() {
        this.set(metrics.#server?.store.watchCount ?? 0);
      },
    });
    this.#accepted = new Counter({ name: "tandem_xenstore_connections_total", help: "Connections accepted.", registers });
    this.#requests = new Counter({ name: "tandem_xenstore_requests_total", help: "Requests answered, by type.", labelNames: ["type"], registers });
    this.#errors = new Counter({ name: "tandem_xenstore_request_errors_total", help: "Requests answered with an error, by type and errno.", labelNames: ["type", "errno"], registers });
    this.#transactions = new Counter({ name: "tandem_xenstore_transactions_total", help: "Transactions started.", registers });
    this.#eagain = new Counter({ name: "tandem_xenstore_transaction_eagain_total", help: "Transaction ends answered EAGAIN (the store changed under them): each a retry for its client.", registers });
  }

  /** The daemon once it listens. */
  serving(server: XenStoreServerView): void {
    this.#server = server;
  }

  /** The daemon's `onConnection`. */
  readonly connection = (): void => {
    this.#accepted.inc();
  };

  /** The daemon's `onRequest`. */
  readonly request = (request: XsMessage, reply: XsMessage): void => {
    const type = TYPE_NAMES[request.type] ?? `unknown_${request.type}`;
    this.#requests.inc({ type });
    if (reply.type === XsType.Error) {
      const errno = bytesToText(reply.payload).replace(/\0.*$/s, "");
      this.#errors.inc({ type, errno });
      if (request.type === XsType.TransactionEnd && errno === "EAGAIN") this.#eagain.inc();
    } else if (request.type === XsType.TransactionStart) {
      this.#transactions.inc();
    }
  };

  override status(): StatusReport {
    return {
      ...super.status(),
      xenstore: {
        path: this.#server?.path ?? "",
        connections: this.#server?.connectionCount ?? 0,
        transactions: this.#server?.store.openTransactions ?? 0,
        watches: this.#server?.store.watchCount ?? 0,
      },
    };
  }
}
