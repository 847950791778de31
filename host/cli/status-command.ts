/**
 * `tandem status ADDR`: asks a running `primary`, `secondary`, `serve` or `xenstored` started with
 * `--metrics ADDR` where it stands (GET /status, host/metrics/status-report.ts) and prints a
 * short summary, or the report itself with --json. It says what the process says and no more:
 * a pair that reports "protected" but has not committed a checkpoint for longer than a few
 * intervals is shown as such, not as healthy.
 */

import { ErrorCode, TandemError } from "../errors.ts";
import type { PairStatus, StatusReport } from "../metrics/status-report.ts";
import { parseMetricsAddress } from "./metrics-option.ts";
import { defineCommand, flag, number, rejectValue } from "./options.ts";

const KINDS = new Set(["primary", "secondary", "serve", "xenstored"]);

/** `http://HOST:PORT` from "PORT", "HOST:PORT" or a URL such as `tandem ... --metrics` logs it. */
export function statusBaseUrl(text: string): string {
  if (/^https?:\/\//.test(text)) {
    try {
      const url = new URL(text);
      return `${url.protocol}//${url.host}`;
    } catch {
      rejectValue("expected PORT, HOST:PORT or http://HOST:PORT");
    }
  }
  const { host = "127.0.0.1", port } = parseMetricsAddress(text);
  return `http://${host.includes(":") ? `[${host}]` : host}:${port}`;
}

export const statusCommand = defineCommand({
  name: "status",
  operands: "ADDR",
  minOperands: 1,
  maxOperands: 1,
  summary: "Say where a running `tandem primary`, `secondary`, `serve` or `xenstored` stands, asking it\nat the address it was given with --metrics ADDR (PORT, HOST:PORT or its URL).",
  options: {
    json: flag("print the process's report as JSON"),
    timeout: number("S", "give up after S seconds without an answer", { above: 0, max: 300, default: 5, unit: "seconds" }),
  },
}, async ({ values, operands: [address] }, io) => {
  let base: string;
  try {
    base = statusBaseUrl(address);
  } catch (error) {
    throw new TandemError(ErrorCode.BadArgument, `status: ${address}: ${error instanceof Error ? error.message.replace(/^E_BAD_ARGUMENT: /, "") : String(error)}`);
  }
  const report = await fetchStatus(`${base}/status`, values.timeout * 1000);
  io.out(values.json ? JSON.stringify(report) : formatStatus(report));
  return 0;
});

async function fetchStatus(url: string, ms: number): Promise<StatusReport> {
  let response: Response;
  try {
    response = await fetch(url, { signal: AbortSignal.timeout(ms) });
  } catch (error) {
    const why = error instanceof Error ? (error.name === "TimeoutError" ? `no answer within ${ms / 1000} s` : (error.cause as Error | undefined)?.message ?? error.message) : String(error);
    throw new TandemError(ErrorCode.PeerLost, `status: nothing answers at ${url} (${why}): is a tandem process running with --metrics at that address?`);
  }
  const body = await response.text();
  let report: unknown;
  try {
    report = JSON.parse(body);
  } catch {
    report = undefined;
  }
  if (response.status !== 200 || typeof report !== "object" || report === null || !KINDS.has((report as StatusReport).kind)) {
    throw new TandemError(ErrorCode.Failed, `status: ${url} answered HTTP ${response.status}, not a tandem status report: is that address a tandem --metrics endpoint?`);
  }
  return report as StatusReport;
}

const seconds = (s: number) => `${s < 10 ? s.toFixed(2) : s.toFixed(0)} s`;

/** The human summary. */
export function formatStatus(report: StatusReport): string {
  const lines = [`${report.kind}, pid ${report.pid}, up ${seconds(report.uptimeSeconds)} (tandem ${report.version}, ${report.runtime})`];
  if (report.pair) lines.push(...formatPair(report.pair));
  if (report.nbd) {
    const n = report.nbd;
    lines.push(`serving    ${n.uri}`, `clients    ${n.connections} connected`, `requests   ${n.requests}, ${n.errors} answered with an error`);
  }
  if (report.xenstore) {
    const x = report.xenstore;
    lines.push(`serving    ${x.path}`, `clients    ${x.connections} connected`, `store      ${x.transactions} transactions open, ${x.watches} watches`);
  }
  return lines.join("\n");
}

function formatPair(p: PairStatus): string[] {
  const lines: string[] = [];
  const stale = (age: number | null) => age !== null && age > p.staleAfterSeconds;
  switch (p.state) {
    case "protected":
    case "syncing": {
      const what = p.state === "protected" ? "PROTECTED: a standby holds the guest whole and may take over" : "SYNCING: a standby is catching up; it cannot take over yet";
      lines.push(`pair       ${what} (generation ${p.generation})`);
      if (p.lastCheckpointAgeSeconds === null || stale(p.lastCheckpointAgeSeconds)) {
        lines.push(`WARNING    no checkpoint acknowledged ${p.lastCheckpointAgeSeconds === null ? "yet" : `for ${seconds(p.lastCheckpointAgeSeconds)}`}: the standby or the link may be stuck`);
      }
      break;
    }
    case "alone":
      lines.push(`pair       ALONE: running the guest UNPROTECTED, no standby (generation ${p.generation})`);
      break;
    case "fenced":
      lines.push(`pair       FENCED: lost its lease; the guest is paused and releases nothing (generation ${p.generation})`);
      break;
    case "standing-by":
      lines.push(`pair       STANDING BY for a primary (generation ${p.generation})`);
      if (stale(p.lastAppliedAgeSeconds)) lines.push(`WARNING    nothing applied for ${seconds(p.lastAppliedAgeSeconds!)}`);
      break;
    default:
      lines.push("pair       starting: no standby or primary yet");
  }
  if (p.checkpoints > 0) {
    lines.push(`checkpoints ${p.checkpoints} committed, the last (${p.lastCheckpoint}) ${seconds(p.lastCheckpointAgeSeconds!)} ago; pause ${p.lastPauseMs!.toFixed(2)} ms, mean ${p.meanPauseMs!.toFixed(2)} ms`);
    lines.push(`held output ${p.heldOutputBytes} bytes`);
  }
  for (const d of p.diskCopy) {
    lines.push(`disk ${d.disk}     ${d.done ? "copied whole" : `copying: ${d.bytes} of ${d.total} bytes`} (${d.mode})`);
  }
  if (p.applied > 0) lines.push(`as standby ${p.applied} checkpoints applied, the last ${seconds(p.lastAppliedAgeSeconds!)} ago`);
  if (p.takeovers > 0) lines.push(`takeovers  ${p.takeovers}`);
  return lines;
}
