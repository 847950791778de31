/**
 * Scrapes a /metrics endpoint and reads it with a real parser of Prometheus' text format
 * (parse-prometheus-text-format, from npm), not a pattern of ours: what it cannot parse, a
 * Prometheus server would not take either.
 */

import parsePrometheusTextFormat, { type PrometheusFamily, type PrometheusSample } from "parse-prometheus-text-format";

/** A scrape, parsed. */
export class Scrape {
  readonly families: PrometheusFamily[];
  readonly contentType: string;

  constructor(text: string, contentType: string) {
    this.families = parsePrometheusTextFormat(text);
    this.contentType = contentType;
  }

  /** The family `name`; throws if absent or not of `type`. */
  family(name: string, type?: PrometheusFamily["type"]): PrometheusFamily {
    const family = this.families.find((f) => f.name === name);
    if (family === undefined) throw new Error(`no metric ${name} in the scrape (${this.families.map((f) => f.name).join(", ")})`);
    if (type !== undefined && family.type !== type) throw new Error(`${name} is a ${family.type}, not a ${type}`);
    return family;
  }

  /** The sample of `name` whose labels include `labels`. */
  sample(name: string, labels: Record<string, string> = {}): PrometheusSample {
    const sample = this.family(name).metrics.find((m) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v));
    if (sample === undefined) throw new Error(`no sample of ${name} with ${JSON.stringify(labels)}`);
    return sample;
  }

  /** A counter's or gauge's value, as a number. */
  value(name: string, labels: Record<string, string> = {}): number {
    return Number(this.sample(name, labels).value);
  }
}

/** GETs `url` (bounded by `ms`) and parses it. */
export async function scrape(url: string, ms = 10_000): Promise<Scrape> {
  const response = await fetch(url, { signal: AbortSignal.timeout(ms) });
  if (response.status !== 200) throw new Error(`${url}: HTTP ${response.status}`);
  return new Scrape(await response.text(), response.headers.get("content-type") ?? "");
}
