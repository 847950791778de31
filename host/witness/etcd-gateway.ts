/**
 * A small etcd v3 client over etcd's JSON gateway (grpc-gateway: POST /v3/kv/range, /v3/kv/txn,
 * /v3/lease/grant, /v3/lease/keepalive, /v3/lease/revoke) and the runtime's own `fetch`.
 *
 * Why not the npm `etcd3` package: it speaks gRPC through @grpc/grpc-js, which rests on Node's
 * http2 module; the gateway needs no dependency and `fetch` behaves the same on Node, Deno and
 * Bun. etcd 3.4 serves the gateway on its client port (`--listen-client-urls`).
 *
 * Field names and encodings are etcd's (api/etcdserverpb/rpc.proto): keys and values are base64,
 * 64-bit integers travel as decimal strings. Replies are untrusted input: every field read here
 * is checked for its type.
 */

import { ErrorCode, TandemError } from "../errors.ts";

/** A key as a range read returns it. */
export interface EtcdKeyValue {
  value: string;
  createRevision: string;
  modRevision: string;
  /** The lease the key is attached to ("0": none). */
  lease: string;
}

/** One comparison of a transaction (etcd's Compare). */
export type EtcdCompare =
  | { key: string; target: "CREATE"; result: "EQUAL"; createRevision: string }
  | { key: string; target: "VALUE"; result: "EQUAL"; value: string };

/** One operation of a transaction: a put (optionally under a lease) or a range read. */
export type EtcdOp = { put: { key: string; value: string; lease?: string } } | { range: { key: string } };

/** Options of {@link EtcdGateway}. */
export interface EtcdGatewayOptions {
  /** How long one request may take before the next endpoint is tried (ms). Default 1000. */
  requestTimeoutMs?: number;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function toBase64(text: string): string {
  let binary = "";
  for (const byte of encoder.encode(text)) binary += String.fromCharCode(byte);
  return btoa(binary);
}

function fromBase64(text: string): string {
  let binary: string;
  try {
    binary = atob(text);
  } catch {
    throw malformed("a value that is not base64");
  }
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return decoder.decode(bytes);
}

function field(object: unknown, name: string): unknown {
  return typeof object === "object" && object !== null ? (object as Record<string, unknown>)[name] : undefined;
}

/** An int64 field: decimal string, or absent (protobuf's JSON leaves zeros out). */
function int64(object: unknown, name: string): string {
  const value = field(object, name) ?? "0";
  if (typeof value !== "string" && typeof value !== "number") throw malformed(`${name} is ${typeof value}`);
  const text = String(value);
  if (!/^-?\d{1,20}$/.test(text)) throw malformed(`${name} is '${text.slice(0, 40)}'`);
  return text;
}

function malformed(what: string): TandemError {
  return new TandemError(ErrorCode.Witness, `etcd answered something malformed: ${what}`);
}

/** Talks to one etcd cluster through any of its client endpoints. */
export class EtcdGateway {
  readonly #endpoints: string[];
  readonly #timeoutMs: number;
  #preferred = 0;

  /** `endpoints`: client URLs such as http://127.0.0.1:2379 (one or more members of one cluster). */
  constructor(endpoints: readonly string[], options: EtcdGatewayOptions = {}) {
    if (endpoints.length === 0) throw new TandemError(ErrorCode.BadArgument, "etcd needs at least one endpoint URL");
    for (const url of endpoints) {
      if (!/^https?:\/\/[^/\s]+\/?$/.test(url)) throw new TandemError(ErrorCode.BadArgument, `'${url}' is not an etcd client URL (http://HOST:PORT)`);
    }
    this.#endpoints = endpoints.map((url) => url.replace(/\/$/, ""));
    this.#timeoutMs = options.requestTimeoutMs ?? 1000;
  }

  /** Grants a lease of `ttlSeconds`; returns its id. */
  async grant(ttlSeconds: number): Promise<string> {
    const reply = await this.#call("/v3/lease/grant", { TTL: String(ttlSeconds) });
    const id = int64(reply, "ID");
    if (id === "0") throw malformed("lease grant without an ID");
    return id;
  }

  /** Renews lease `id`; returns its TTL in seconds, 0 if the lease no longer exists. */
  async keepAlive(id: string): Promise<number> {
    const reply = await this.#call("/v3/lease/keepalive", { ID: id });
    return Number(int64(field(reply, "result"), "TTL"));
  }

  /** Revokes lease `id` (its keys go with it). A lease already gone is not an error. */
  async revoke(id: string): Promise<void> {
    await this.#call("/v3/lease/revoke", { ID: id }, true);
  }

  /** Reads one key (linearizable); undefined if it does not exist. */
  async get(key: string): Promise<EtcdKeyValue | undefined> {
    return keyValue(await this.#call("/v3/kv/range", { key: toBase64(key) }));
  }

  /**
   * Runs a transaction: if every comparison holds, `success`, else `failure`. Returns whether it
   * succeeded and, per range read of the branch taken, the key found (or undefined).
   */
  async txn(compare: readonly EtcdCompare[], success: readonly EtcdOp[], failure: readonly EtcdOp[] = []): Promise<{ succeeded: boolean; reads: (EtcdKeyValue | undefined)[] }> {
    const body = {
      compare: compare.map((c) => c.target === "CREATE"
        ? { key: toBase64(c.key), target: "CREATE", result: "EQUAL", create_revision: c.createRevision }
        : { key: toBase64(c.key), target: "VALUE", result: "EQUAL", value: toBase64(c.value) }),
      success: success.map(op),
      failure: failure.map(op),
    };
    const reply = await this.#call("/v3/kv/txn", body);
    const succeeded = field(reply, "succeeded") === true;
    const responses = field(reply, "responses") ?? [];
    if (!Array.isArray(responses)) throw malformed("txn responses is not a list");
    const reads = responses.filter((r) => field(r, "response_range") !== undefined).map((r) => keyValue(field(r, "response_range")));
    return { succeeded, reads };
  }

  /** POSTs `body` to `path` on the preferred endpoint, then the others; E_WITNESS if none answers. */
  async #call(path: string, body: unknown, notFoundIsFine = false): Promise<unknown> {
    const failures: string[] = [];
    for (let tried = 0; tried < this.#endpoints.length; tried++) {
      const index = (this.#preferred + tried) % this.#endpoints.length;
      const url = this.#endpoints[index] + path;
      let reply: unknown;
      try {
        const response = await fetch(url, { method: "POST", body: JSON.stringify(body), signal: AbortSignal.timeout(this.#timeoutMs) });
        reply = await response.json();
      } catch (error) {
        failures.push(`${url}: ${error instanceof Error ? error.message : String(error)}`);
        continue;
      }
      const error = field(reply, "error"); // a string, or {message} from a streaming call
      if (error !== undefined) {
        const message = typeof error === "string" ? error : field(error, "message");
        const text = typeof message === "string" ? message.slice(0, 200) : "an error without a message";
        if (notFoundIsFine && text.includes("not found")) return reply;
        // An error etcd states (no leader, lease not found) is an answer: another member would
        // give the same one, or a stale one.
        if (!text.includes("no leader") && !text.includes("timed out")) throw new TandemError(ErrorCode.Witness, `etcd ${path}: ${text}`);
        failures.push(`${url}: ${text}`);
        continue;
      }
      this.#preferred = index;
      return reply;
    }
    throw new TandemError(ErrorCode.Witness, `no etcd endpoint answered ${path} (${failures.join("; ")})`);
  }
}

function op(o: EtcdOp): unknown {
  if ("put" in o) return { request_put: { key: toBase64(o.put.key), value: toBase64(o.put.value), ...(o.put.lease ? { lease: o.put.lease } : {}) } };
  return { request_range: { key: toBase64(o.range.key) } };
}

function keyValue(rangeReply: unknown): EtcdKeyValue | undefined {
  const kvs = field(rangeReply, "kvs");
  if (kvs === undefined) return undefined;
  if (!Array.isArray(kvs)) throw malformed("kvs is not a list");
  if (kvs.length === 0) return undefined;
  const kv: unknown = kvs[0];
  const value = field(kv, "value") ?? "";
  if (typeof value !== "string" || value.length > 65536) throw malformed("a value that is not a short base64 string");
  return { value: fromBase64(value), createRevision: int64(kv, "create_revision"), modRevision: int64(kv, "mod_revision"), lease: int64(kv, "lease") };
}
