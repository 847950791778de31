/**
 * The HTTP endpoint a long-running tandem process serves with `--metrics ADDR`:
 *
 * - `GET /metrics`: its metrics in Prometheus' text exposition format (version 0.0.4), for a
 *   Prometheus server's scrape, as etcd serves its own.
 * - `GET /status`: a short JSON report of what the process is and where it stands, which
 *   `tandem status ADDR` prints (status-report.ts describes it).
 *
 * Plain node:http, which Node, Deno and Bun all serve. Anything else is 404; a method other than
 * GET or HEAD is 405.
 */

import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Registry } from "prom-client";
import { ErrorCode, TandemError } from "../errors.ts";
import type { StatusReport } from "./status-report.ts";

/** Where the endpoint listens (TCP; the host defaults to loopback). */
export interface MetricsAddress {
  host?: string;
  port: number;
}

/** What the endpoint serves. */
export interface MetricsSource {
  /** The process's metrics. */
  registry: Registry;
  /** The process's status, as of now. */
  status(): StatusReport;
}

/** A running endpoint. */
export interface MetricsServer {
  /** The bound address (the port chosen when 0 was asked for). */
  readonly address: { host: string; port: number };
  /** Stops listening and ends open connections. */
  close(): Promise<void>;
}

const DEFAULT_HOST = "127.0.0.1";

/** Serves `source` at `address`; rejects E_BAD_ARGUMENT (naming the address) if it cannot listen there. */
export async function serveMetrics(address: MetricsAddress, source: MetricsSource): Promise<MetricsServer> {
  const server = createServer((request, response) => void answer(request, response, source));
  const host = address.host ?? DEFAULT_HOST;
  await new Promise<void>((resolve, reject) => {
    server.once("error", (error) => reject(new TandemError(ErrorCode.BadArgument,
      `cannot serve metrics on ${host}:${address.port} (${error.message}); choose another --metrics address`)));
    server.listen(address.port, host, () => resolve());
  });
  const bound = server.address() as AddressInfo;
  return {
    address: { host, port: bound.port },
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections?.(); // keep-alive scrapers would otherwise hold the close open
    }),
  };
}

async function answer(request: IncomingMessage, response: ServerResponse, source: MetricsSource): Promise<void> {
  const path = (request.url ?? "/").split("?")[0];
  if (request.method !== "GET" && request.method !== "HEAD") {
    response.writeHead(405, { allow: "GET, HEAD" }).end();
    return;
  }
  try {
    if (path === "/metrics") {
      const body = await source.registry.metrics();
      response.writeHead(200, { "content-type": source.registry.contentType }).end(request.method === "HEAD" ? undefined : body);
    } else if (path === "/status") {
      response.writeHead(200, { "content-type": "application/json" }).end(request.method === "HEAD" ? undefined : JSON.stringify(source.status()));
    } else {
      response.writeHead(404, { "content-type": "text/plain" }).end("not found: try /metrics or /status\n");
    }
  } catch (error) {
    response.writeHead(500, { "content-type": "text/plain" }).end(`${error instanceof Error ? error.message : String(error)}\n`);
  }
}
