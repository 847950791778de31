/**
 * Scrapes a /metrics endpoint and reads it with a real parser of Prometheus' text format
 * (prom2javascript, from npm), not a pattern of ours: a line it cannot parse fails the scrape.
 * (parse-prometheus-text-format, the more common one, merges a histogram's labelled series into
 * one and so cannot check `tandem_nbd_request_seconds{command=...}`.)
 */

import { getMetricsFromIterator, type PromHistogramData, type PromMetric, type PromMetrics } from "prom2javascript";

/** One series: its labels and value, or a histogram's buckets, count and sum. */
type Series = { labels: Record<string, string>; value?: number } & Partial<Omit<PromHistogramData, "labels">>;

/** A scrape, parsed. */
export class Scrape {
  readonly metrics: PromMetrics;
  readonly contentType: string;

  constructor(metrics: PromMetrics, contentType: string) {
    this.metrics = metrics;
    this.contentType = contentType;
  }

  /** The family `name`; throws if absent or not of `type` ("counter", "gauge", "histogram"). */
  family(name: string, type?: string): PromMetric {
    const family = this.metrics[name];
    if (family === undefined) throw new Error(`no metric ${name} in the scrape (${Object.keys(this.metrics).join(", ")})`);
    if (type !== undefined && family.type !== type) throw new Error(`${name} is a ${family.type}, not a ${type}`);
    return family;
  }

  /** Every series of `name`. */
  series(name: string): Series[] {
    return this.family(name).data as Series[];
  }

  /** The series of `name` whose labels include `labels`. */
  sample(name: string, labels: Record<string, string> = {}): Series {
    const sample = this.series(name).find((m) => Object.entries(labels).every(([k, v]) => m.labels[k] === v));
    if (sample === undefined) throw new Error(`no series of ${name} with ${JSON.stringify(labels)}`);
    return sample;
  }

  /** A counter's or gauge's value. */
  value(name: string, labels: Record<string, string> = {}): number {
    const value = this.sample(name, labels).value;
    if (typeof value !== "number") throw new Error(`${name} has no plain value`);
    return value;
  }
}

/** GETs `url` (bounded by `ms`) and parses it. */
export async function scrape(url: string, ms = 10_000): Promise<Scrape> {
  const response = await fetch(url, { signal: AbortSignal.timeout(ms) });
  if (response.status !== 200) throw new Error(`${url}: HTTP ${response.status}`);
  const text = await response.text();
  return new Scrape(await getMetricsFromIterator(text.split("\n")[Symbol.iterator]()), response.headers.get("content-type") ?? "");
}
