/**
 * `--metrics ADDR`, which the long-running commands (primary, secondary, serve, xenstored) take:
 * an HTTP endpoint with /metrics (Prometheus) and /status (`tandem status`), host/metrics/.
 */

import { serveMetrics, type MetricsAddress, type MetricsServer, type MetricsSource } from "../metrics/metrics-server.ts";
import { custom, rejectValue, type Option } from "./options.ts";

/** "PORT" or "HOST:PORT" (HOST defaults to 127.0.0.1); TCP only, as Prometheus scrapes. */
export function parseMetricsAddress(text: string): MetricsAddress {
  const colon = text.lastIndexOf(":");
  const [host, port] = colon >= 0 ? [text.slice(0, colon).replace(/^\[(.*)\]$/, "$1"), text.slice(colon + 1)] : [undefined, text];
  const n = /^\d+$/.test(port) ? Number(port) : NaN;
  if (!(n >= 0 && n <= 65535) || host === "") rejectValue("expected PORT (0-65535) or HOST:PORT");
  return host === undefined ? { port: n } : { host, port: n };
}

/** The option. */
export const METRICS_OPTION: Option<MetricsAddress | undefined> = custom("ADDR",
  "serve /metrics (Prometheus' text format) and /status (`tandem status ADDR`)\nover HTTP at PORT or HOST:PORT (0: any free port; the log says which)",
  parseMetricsAddress);

/** `http://HOST:PORT`, as `tandem status` and a browser take it. */
export function metricsUrl(server: MetricsServer): string {
  const host = server.address.host.includes(":") ? `[${server.address.host}]` : server.address.host;
  return `http://${host}:${server.address.port}`;
}

/** Serves `source` when `address` was given; `announce` is told the URL. */
export async function startMetrics(address: MetricsAddress | undefined, source: MetricsSource, announce: (url: string) => void): Promise<MetricsServer | undefined> {
  if (address === undefined) return undefined;
  const server = await serveMetrics(address, source);
  announce(metricsUrl(server));
  return server;
}
