import { readFileSync, writeFileSync } from "node:fs";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { openDisk } from "../host/disk/registry.ts";
import { NbdServer } from "../host/nbd/server.ts";
import { MAX_PAYLOAD } from "../host/nbd/transmission.ts";
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_ENOTSUP,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
} from "../host/nbd/protocol.ts";
import { seededRandom } from "../host/prng.ts";
import { concat } from "./support/bytes.ts";
import { handshake, option, RawClient, request, simpleReply, u32 } from "./support/nbd.ts";
import { tempDir } from "./support/qemu.ts";

const test = suite("NBD server fuzz: random handshakes and request streams from raw clients, checked against a model");

/** Connections per test; TANDEM_FUZZ (as for the other fuzz tests) scales it up for a longer run. */
const CONNECTIONS = Math.max(10, Math.round(Number(globalThis.process?.env?.TANDEM_FUZZ ?? 300) / 4));
const EXPORT = "fuzz";
const DISK_BYTES = 1 << 20;
/** How long a connection may stay open after the client is done: the server must hang up by then. */
const CLOSE_MS = 5000;

type Random = () => number;
const pick = <T>(random: Random, items: readonly T[]): T => items[Math.floor(random() * items.length)];
const int = (random: Random, below: number): number => Math.floor(random() * below);
function bytes(random: Random, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = int(random, 256);
  return out;
}

/** Writes a raw disk file filled with a known pattern; returns the bytes. */
function patternedDisk(path: string): Uint8Array {
  const content = new Uint8Array(DISK_BYTES);
  for (let i = 0; i < DISK_BYTES; i++) content[i] = (i * 7 + (i >>> 12)) & 0xff;
  writeFileSync(path, content);
  return content;
}

/** Serves the raw file at `path` in this process for the length of `body`. */
async function serving(path: string, body: (where: { port: number }, server: NbdServer) => Promise<void>): Promise<void> {
  const disk = openDisk(path);
  const server = await NbdServer.listen({ disk, exportName: EXPORT }, { port: 0 });
  try {
    await body(server.address as { port: number }, server);
  } finally {
    await server.close();
    disk.close();
  }
}

/** Half-closes the client's side and waits for the server to hang up; fails if it does not in time. */
async function hungUp(client: RawClient, what: string): Promise<void> {
  client.socket.end();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<"late">((resolve) => (timer = setTimeout(() => resolve("late"), CLOSE_MS)));
  const outcome = await Promise.race([client.closed.then(() => "closed" as const), late]);
  clearTimeout(timer);
  if (outcome === "late") {
    client.destroy();
    assert.unreachable(`${what}: the server kept the connection open ${CLOSE_MS} ms after the client finished`);
  }
}

/** A good client still gets the export and reads `expected` at offset 0. */
async function stillServes(where: { port: number }, expected: Uint8Array, what: string): Promise<void> {
  const client = await RawClient.connect(where);
  await handshake(client, EXPORT);
  client.write(request(NBD_CMD_READ, 1, 0, expected.length));
  const reply = await simpleReply(client, expected.length);
  assert.is(reply.error, 0, `${what}: a good READ failed`);
  assert.ok(Buffer.from(reply.data).equals(Buffer.from(expected)), `${what}: a good READ returned other bytes`);
  client.destroy();
}

/** Waits until the server has let go of every connection. */
async function drained(server: NbdServer, what: string): Promise<void> {
  const deadline = Date.now() + CLOSE_MS;
  while (server.connectionCount > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  assert.is(server.connectionCount, 0, `${what}: connections left open`);
}

/** One client option with plausible, lying or random data. */
function randomOption(random: Random): Uint8Array {
  const name = new TextEncoder().encode(pick(random, [EXPORT, "", "nope", "x".repeat(int(random, 5000))]));
  const code = pick(random, [NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_LIST, NBD_OPT_ABORT, NBD_OPT_EXPORT_NAME, NBD_OPT_STRUCTURED_REPLY,
    NBD_OPT_LIST_META_CONTEXT, NBD_OPT_SET_META_CONTEXT, int(random, 20), 0x7fffffff]);
  let data: Uint8Array;
  switch (code) {
    case NBD_OPT_GO:
    case NBD_OPT_INFO: {
      const infos = Array.from({ length: int(random, 4) }, () => int(random, 5));
      const count = random() < 0.8 ? infos.length : int(random, 0x10000);
      data = concat([u32(random() < 0.8 ? name.length : int(random, 0x10000)), name, Uint8Array.of(count >> 8, count & 0xff),
        ...infos.map((i) => Uint8Array.of(0, i))]);
      break;
    }
    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT: {
      const queries = Array.from({ length: int(random, 3) }, () =>
        new TextEncoder().encode(pick(random, ["base:allocation", "base:", "qemu:dirty-bitmap:x", ""])));
      data = concat([u32(name.length), name, u32(random() < 0.8 ? queries.length : int(random, 1 << 30)),
        ...queries.flatMap((q) => [u32(random() < 0.8 ? q.length : int(random, 1 << 30)), q])]);
      break;
    }
    case NBD_OPT_EXPORT_NAME:
      data = name;
      break;
    default:
      data = bytes(random, int(random, 40));
  }
  const framed = option(code, data);
  // Sometimes the header's length says something else than the data that follows.
  if (random() < 0.15) new DataView(framed.buffer).setUint32(12, pick(random, [0, 1, data.length + 1, 0xffffffff, int(random, 1 << 24)]));
  return framed;
}

/** Flips a few random bytes and maybe cuts the end off. */
function mutate(random: Random, input: Uint8Array): Uint8Array {
  const out = input.slice();
  for (let flips = int(random, 4); flips > 0 && out.length > 0; flips--) out[int(random, out.length)] ^= 1 + int(random, 255);
  return random() < 0.3 ? out.subarray(0, int(random, out.length + 1)) : out;
}

/** Writes `data` in a few pieces, as a network would cut it. */
function writeInPieces(random: Random, client: RawClient, data: Uint8Array): void {
  for (let at = 0; at < data.length; ) {
    const n = 1 + int(random, Math.max(1, data.length - at));
    client.write(data.subarray(at, at + n));
    at += n;
  }
}

test("random and mutated handshakes: the server answers or hangs up, never hangs or falls over, and keeps serving", async () => {
  const t = tempDir("nbd-fuzz-handshake");
  try {
    const content = patternedDisk(t.path("d.raw"));
    await serving(t.path("d.raw"), async (where, server) => {
      const random = seededRandom(801);
      for (let run = 0; run < CONNECTIONS; run += 4) {
        // Four clients at a time, so that hostile sessions also overlap.
        await Promise.all([0, 1, 2, 3].map(async (k) => {
          const what = `handshake run ${run + k}`;
          const client = await RawClient.connect(where);
          const input = random() < 0.25
            ? bytes(random, int(random, 200))
            : mutate(random, concat([u32(random() < 0.9 ? NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES : int(random, 1 << 16)),
              ...Array.from({ length: 1 + int(random, 4) }, () => randomOption(random))]));
          writeInPieces(random, client, input);
          await hungUp(client, what);
        }));
        if (run % 20 === 0) await stillServes(where, content.subarray(0, 4096), `after handshake run ${run}`);
      }
      await drained(server, "after the handshake fuzz");
      await stillServes(where, content, "after the handshake fuzz");
    });
    assert.ok(Buffer.from(readFileSync(t.path("d.raw"))).equals(Buffer.from(content)), "a handshake changed the disk");
  } finally {
    t.remove();
  }
});

/** A request the model has decided: what goes on the wire, and what the server must answer. */
interface Planned {
  wire: Uint8Array;
  cookie: number;
  /** The error the reply must carry; undefined if no reply comes (DISC, bad magic, cut short). */
  error?: number;
  /** For a successful READ, the bytes it must return (the model at that point). */
  data?: Uint8Array;
  /** True if the server hangs up after it (DISC, bad magic). */
  last?: boolean;
}

/**
 * Plans one random request against `model` (which it updates as the server will), following
 * transmission.ts: range and size checks first, writes refused before their payload is read and
 * that payload skipped, raw discard reading back as zeros, unknown commands ENOTSUP.
 */
function planRequest(random: Random, model: Uint8Array, cookie: number): Planned {
  const type = pick(random, [NBD_CMD_READ, NBD_CMD_READ, NBD_CMD_WRITE, NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES, NBD_CMD_TRIM,
    NBD_CMD_FLUSH, NBD_CMD_BLOCK_STATUS, NBD_CMD_CACHE, 8 + int(random, 100)]);
  const length = pick(random, [0, 1 + int(random, 4096), 4096, 65536, 1 + int(random, 256 * 1024), DISK_BYTES, DISK_BYTES + 1]);
  const offset = pick(random, [0, int(random, DISK_BYTES), DISK_BYTES - length, DISK_BYTES - length + 1, DISK_BYTES,
    2 ** 40, 2 ** 62]);
  const flags = random() < 0.7 ? 0 : pick(random, [NBD_CMD_FLAG_FUA, NBD_CMD_FLAG_NO_HOLE, int(random, 1 << 16)]);
  const safeOffset = Math.max(0, offset);
  const header = request(type, cookie, safeOffset, length, flags);
  const inRange = safeOffset + length <= DISK_BYTES;
  if (random() < 0.05) {
    // Bad magic: the stream is out of step, so the server hangs up without a reply.
    header[int(random, 4)] ^= 1 + int(random, 255);
    return { wire: header, cookie, last: true };
  }
  switch (type) {
    case NBD_CMD_READ:
      if (!inRange) return { wire: header, cookie, error: NBD_EINVAL };
      return { wire: header, cookie, error: 0, data: model.slice(safeOffset, safeOffset + length) };
    case NBD_CMD_WRITE: {
      const payload = bytes(random, length);
      if (!inRange) return { wire: concat([header, payload]), cookie, error: NBD_EINVAL };
      model.set(payload, safeOffset);
      return { wire: concat([header, payload]), cookie, error: 0 };
    }
    case NBD_CMD_WRITE_ZEROES:
    case NBD_CMD_TRIM:
      if (!inRange) return { wire: header, cookie, error: NBD_EINVAL };
      model.fill(0, safeOffset, safeOffset + length);
      return { wire: header, cookie, error: 0 };
    case NBD_CMD_FLUSH:
      return { wire: header, cookie, error: 0 };
    case NBD_CMD_BLOCK_STATUS:
      return { wire: header, cookie, error: NBD_EINVAL }; // no structured replies were negotiated
    default:
      return { wire: header, cookie, error: NBD_ENOTSUP };
  }
}

test("random request streams: every reply is the model's, in order, and the disk ends as the model says", async () => {
  assert.ok(MAX_PAYLOAD >= DISK_BYTES + 1, "the model assumes no request here passes the payload limit");
  const t = tempDir("nbd-fuzz-requests");
  try {
    const model = patternedDisk(t.path("d.raw"));
    await serving(t.path("d.raw"), async (where, server) => {
      const random = seededRandom(802);
      for (let run = 0; run < CONNECTIONS; run++) {
        const what = `request run ${run}`;
        const client = await RawClient.connect(where);
        await handshake(client, EXPORT);
        const planned: Planned[] = [];
        for (let i = 0, count = 1 + int(random, 12); i < count; i++) {
          const p = planRequest(random, model, run * 100 + i + 1);
          planned.push(p);
          if (p.last) break;
        }
        const ending = random();
        if (ending < 0.1 && !planned.at(-1)!.last) {
          planned.push({ wire: request(NBD_CMD_DISC, 0, 0, 0), cookie: 0, last: true });
        } else if (ending < 0.2 && !planned.at(-1)!.last) {
          // A last WRITE cut short: nothing of it may reach the disk, and it gets no reply.
          const length = 1 + int(random, 65536);
          const cut = concat([request(NBD_CMD_WRITE, 99, int(random, DISK_BYTES - length), length, 0), bytes(random, length)]);
          planned.push({ wire: cut.subarray(0, int(random, cut.length)), cookie: 99 });
        }
        writeInPieces(random, client, concat(planned.map((p) => p.wire)));
        for (const p of planned) {
          if (p.error === undefined) continue;
          const reply = await simpleReply(client, p.data?.length ?? 0);
          assert.equal([reply.cookie, reply.error], [p.cookie, p.error], `${what}: the reply to cookie ${p.cookie}`);
          if (p.data) assert.ok(Buffer.from(reply.data).equals(Buffer.from(p.data)), `${what}: READ ${p.cookie} returned other bytes than the model`);
        }
        await hungUp(client, what);
      }
      await drained(server, "after the request fuzz");
      await stillServes(where, model, "after the request fuzz");
    });
    assert.ok(Buffer.from(readFileSync(t.path("d.raw"))).equals(Buffer.from(model)), "the disk file differs from the model");
  } finally {
    t.remove();
  }
});

test.run();
