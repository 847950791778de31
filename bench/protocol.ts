/**
 * `npm run bench -- protocol`: the transaction layer.
 *
 * framing: 1 MiB transactions of 4 KiB pages (BEGIN, 256 CONTINUE, COMMIT) encoded by the frame
 *          kernel from a source area into a wire buffer, then decoded in place into payload
 *          segments, all in memory; against one memcpy of the same 1 MiB. Every flavor, one run.
 * delta:   page deltas for 1024 pages each with 1% of their bytes (41) changed at random places:
 *          encode speed for every flavor, and encoded bytes over raw bytes.
 * tcp:     committed, acknowledged transactions from a sender to a receiver in another process
 *          over TCP loopback, against raw socket writes of the same payload bytes to the same
 *          process, which counts them and answers one byte after each run's last; both timed to
 *          that answer. Every contender keeps one warm connection for the whole bench. Each
 *          transaction run is paired with a raw run of the same write size in the same round,
 *          and every efficiency is the median of those per-pair ratios.
 *          tcp_efficiency: 1 MiB transactions handed over in 256 KiB writeNoCopy()s, pipelined
 *          (a window of 4), against raw 256 KiB writes: the same write sizes at the application
 *          and on the socket, so it measures what the transaction layer costs.
 *          tcp_efficiency_stop_and_wait: the same with a window of 1 (each transaction waits for
 *          its ACK); tcp_efficiency_16mib and tcp_efficiency_16mib_stop_and_wait: 16 MiB
 *          transactions, window 4 and window 1.
 *          tcp_efficiency_4k_writes (pipelined) and tcp_efficiency_4k_writes_stop_and_wait:
 *          1 MiB transactions written as 4 KiB pages (write(), copied into the sender's 256 KiB
 *          buffers) against raw 4 KiB writes.
 */

import { Buffer } from "node:buffer";
import * as net from "node:net";
import { Cmd, FrameDecoder, HEADER_SIZE } from "../host/protocol/frame.ts";
import { TransactionSender } from "../host/protocol/sender.ts";
import { connect } from "../host/protocol/socket-transport.ts";
import { Heap } from "../host/wasm/heap.ts";
import { DELTA_TOO_LARGE, kernelsFor, type KernelFlavor } from "../host/wasm/kernels.ts";
import { seededRandom } from "../host/prng.ts";
import { median, race, type Contender } from "./timing.ts";
import type { Progress } from "./memory.ts";
import { startPeer } from "./peer-process.ts";

const PAGE = 4096;
const TXN = 1 << 20;
const PAGES = TXN / PAGE;
const FLAVORS: KernelFlavor[] = ["simd", "scalar", "ts"];
/** A second, larger transaction size for the TCP bench: each transaction pays one round trip. */
const LARGE_TXN = 16 << 20;
/** The pipelined TCP runs' window: enough to keep the wire busy over a loopback round trip. */
const WINDOW = 4;

function framing(progress: Progress): Record<string, number> {
  const wireBytes = TXN + (PAGES + 2) * HEADER_SIZE;
  const heap = Heap.create(2 * TXN + wireBytes + 64 * 1024);
  const source = heap.alloc(TXN);
  const wire = heap.alloc(wireBytes);
  const copy = heap.alloc(TXN);
  for (let i = 0; i < TXN; i += 7) heap.u8[source + i] = i & 0xff;
  let checked = 0;
  const contenders: Contender[] = FLAVORS.map((flavor) => {
    const k = kernelsFor(heap, flavor);
    const decoder = new FrameDecoder(heap, k, { maxPayload: PAGE });
    let bytes = 0;
    const sink = { header: () => {}, payload: (_offset: number, length: number) => void (bytes += length) };
    return {
      name: flavor,
      run: () => {
        let at = wire;
        at += k.frameEncode(at, Cmd.Begin, 1, 0, 0, 0);
        for (let p = 0; p < PAGES; p++) at += k.frameEncode(at, Cmd.Continue, 1, p + 1, source + p * PAGE, PAGE);
        at += k.frameEncode(at, Cmd.Commit, 1, PAGES + 1, 0, 0);
        bytes = 0;
        decoder.decode(wire, at - wire, 0, sink);
        if (bytes !== TXN) throw new Error(`framing bench: ${flavor} decoded ${bytes} payload bytes, expected ${TXN}`);
        checked++;
      },
    };
  });
  contenders.push({ name: "memcpy", run: () => void heap.u8.copyWithin(copy, source, source + TXN) });
  const ms = race(contenders, { warmup: 30, rounds: 101, onRound: (r) => progress(`framing, round ${r + 1}/131`) });
  if (checked === 0) throw new Error("framing bench ran nothing");
  const gbps = (name: string) => TXN / 1e9 / (ms[name] / 1000);
  return {
    framing_gbps_wasm: gbps("simd"),
    framing_gbps_wasm_scalar: gbps("scalar"),
    framing_gbps_ts: gbps("ts"),
    memcpy_gbps: gbps("memcpy"),
    framing_vs_memcpy: ms.memcpy / ms.simd,
    framing_vs_memcpy_ts: ms.memcpy / ms.ts,
  };
}

function delta(progress: Progress): Record<string, number> {
  const pages = 1024;
  const heap = Heap.create(3 * pages * PAGE + 64 * 1024);
  const prev = heap.alloc(pages * PAGE);
  const next = heap.alloc(pages * PAGE);
  const out = heap.alloc(pages * PAGE);
  const random = seededRandom(5);
  for (let i = 0; i < pages * PAGE; i++) heap.u8[prev + i] = random() < 0.5 ? 0 : Math.floor(random() * 256);
  heap.u8.copyWithin(next, prev, prev + pages * PAGE);
  for (let p = 0; p < pages; p++) {
    for (let c = 0; c < Math.round(PAGE / 100); c++) heap.u8[next + p * PAGE + Math.floor(random() * PAGE)] ^= 1 + Math.floor(random() * 255);
  }
  const encoded = new Map<string, number>();
  const contenders: Contender[] = FLAVORS.map((flavor) => {
    const k = kernelsFor(heap, flavor);
    return {
      name: flavor,
      run: () => {
        let total = 0;
        for (let p = 0; p < pages; p++) {
          const n = k.deltaEncode(prev + p * PAGE, next + p * PAGE, PAGE, out + p * PAGE, PAGE - 8);
          total += n === DELTA_TOO_LARGE ? PAGE : n;
        }
        encoded.set(flavor, total);
      },
    };
  });
  const ms = race(contenders, { warmup: 10, rounds: 41, onRound: (r) => progress(`page deltas, round ${r + 1}/51`) });
  if (new Set(encoded.values()).size !== 1) throw new Error(`delta bench: flavors encoded different sizes ${[...encoded.values()]}`);
  const gbps = (name: string) => (pages * PAGE) / 1e9 / (ms[name] / 1000);
  return {
    delta_encode_gbps_wasm: gbps("simd"),
    delta_encode_gbps_wasm_scalar: gbps("scalar"),
    delta_encode_gbps_ts: gbps("ts"),
    delta_encode_speedup_vs_ts: ms.ts / ms.simd,
    delta_ratio_1pct: encoded.get("simd")! / (pages * PAGE),
  };
}

/** A connection kept for the whole bench: each run sends `total` bytes and returns the seconds it took. */
interface TcpConnection {
  run(total: number): Promise<number>;
  close(): void;
}

/**
 * A long-lived raw connection to the peer, as a replication stream is: each run pushes `total`
 * bytes in writes of `size` bytes and waits for the peer's one-byte answer. The writes rotate
 * through four buffers, as the sender's pool does, rather than resending one cache-hot buffer: a
 * real writer sends different bytes each time.
 */
async function rawConnection(port: number, size: number): Promise<TcpConnection> {
  const pool = Array.from({ length: 4 }, (_, i) => Buffer.alloc(size, i + 1));
  const socket = net.connect({ port, host: "127.0.0.1" });
  await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
  socket.setNoDelay(true);
  const run = async (total: number) => {
    const answered = new Promise<void>((resolve) => socket.once("data", () => resolve()));
    const start = performance.now();
    for (let sent = 0, i = 0; sent < total; sent += size, i++) {
      if (!socket.write(pool[i & 3])) await new Promise<void>((resolve) => socket.once("drain", () => resolve()));
    }
    await answered;
    return (performance.now() - start) / 1000;
  };
  return { run, close: () => socket.destroy() };
}

/**
 * A long-lived transaction session to the peer. Each run sends `total` bytes as committed
 * transactions of `txn` bytes and waits for the last ACK. The application writes `size` bytes at
 * a time: 4 KiB pages through `write()` (copied into the sender's pool), or larger buffers through
 * `writeNoCopy()` (sent from the application's memory, which it leaves alone until the commit),
 * rotating through four of them as the raw connection does (they never change, so pipelined
 * transactions may share them). With a `window` over 1, commits are left outstanding and the
 * oldest is awaited once `window` are, as an application would.
 */
async function transactionSession(port: number, txn: number, size: number, window: number): Promise<TcpConnection> {
  const sender = new TransactionSender(await connect({ port }), { window });
  await sender.open();
  const pool = Array.from({ length: 4 }, (_, i) => new Uint8Array(size).fill(i + 1));
  const run = async (total: number) => {
    const acked = sender.stats.acked;
    const commits: Promise<void>[] = [];
    const start = performance.now();
    for (let sent = 0, i = 0; sent < total; sent += txn) {
      if (commits.length === window) await commits.shift();
      await sender.begin();
      for (let at = 0; at < txn; at += size, i++) {
        if (size === PAGE) await sender.write(pool[i & 3]);
        else await sender.writeNoCopy(pool[i & 3]);
      }
      commits.push(sender.commit());
    }
    await Promise.all(commits);
    const seconds = (performance.now() - start) / 1000;
    const answered = sender.stats.acked - acked;
    if (answered !== total / txn) throw new Error(`tcp bench: ${answered} transactions acknowledged, expected ${total / txn}`);
    return seconds;
  };
  return { run, close: () => sender.close() };
}

/** A TCP contender: the raw baseline it is paired with in each round, and how it connects. */
interface TcpRun {
  raw: "raw_4k" | "raw_256k";
  open: () => Promise<TcpConnection>;
}

async function tcp(progress: Progress): Promise<Record<string, number>> {
  const total = 128 << 20;
  const large = 256 * 1024; // the sender's default buffer size
  const rounds = 31;
  const warmup = 3;
  const peer = await startPeer("./tcp-peer.ts", [String(total)], "the TCP peer");
  const [rawPort, txnPort] = peer.ports;
  const baselines: Record<TcpRun["raw"], () => Promise<TcpConnection>> = {
    raw_4k: () => rawConnection(rawPort, PAGE),
    raw_256k: () => rawConnection(rawPort, large),
  };
  const contenders: Record<string, TcpRun> = {
    txn_1mib_256k_pipelined: { raw: "raw_256k", open: () => transactionSession(txnPort, TXN, large, WINDOW) },
    txn_1mib_256k: { raw: "raw_256k", open: () => transactionSession(txnPort, TXN, large, 1) },
    txn_16mib_256k: { raw: "raw_256k", open: () => transactionSession(txnPort, LARGE_TXN, large, 1) },
    txn_16mib_256k_pipelined: { raw: "raw_256k", open: () => transactionSession(txnPort, LARGE_TXN, large, WINDOW) },
    txn_1mib_4k_pipelined: { raw: "raw_4k", open: () => transactionSession(txnPort, TXN, PAGE, WINDOW) },
    txn_1mib_4k: { raw: "raw_4k", open: () => transactionSession(txnPort, TXN, PAGE, 1) },
  };
  const gbps: Record<string, number[]> = Object.fromEntries([...Object.keys(baselines), ...Object.keys(contenders)].map((name) => [name, []]));
  // Each transaction run is paired with a run of its raw baseline right next to it, in the same
  // round, and the efficiency is the median of those per-pair ratios: loopback throughput drifts
  // by a factor of two with what else the machine runs, and a pair sees the same drift. Every
  // contender keeps one connection for the whole bench, opened before timing, as a replication
  // session would: runs measure a warm stream, not a connection's setup and TCP's slow start.
  const ratios: Record<string, number[]> = Object.fromEntries(Object.keys(contenders).map((name) => [name, []]));
  const connections: TcpConnection[] = [];
  const opened = async (open: () => Promise<TcpConnection>) => {
    const connection = await open();
    connections.push(connection);
    return connection;
  };
  try {
    const raw: Record<string, TcpConnection> = {};
    for (const [name, open] of Object.entries(baselines)) raw[name] = await opened(open);
    const runs: Record<string, TcpConnection> = {};
    for (const [name, contender] of Object.entries(contenders)) runs[name] = await opened(contender.open);
    const gbpsOf = async (connection: TcpConnection) => total / 1e9 / (await connection.run(total));
    for (let round = 0; round < warmup + rounds; round++) {
      progress(`tcp loopback, round ${round + 1}/${warmup + rounds}`);
      const names = Object.keys(contenders);
      for (let k = 0; k < names.length; k++) {
        const index = (round + k) % names.length;
        const name = names[index];
        const baseline = contenders[name].raw;
        // Alternate, round by round, which of the pair goes first, so neither always follows
        // the same thing.
        const rawFirst = (round + index) % 2 === 0;
        const rawBefore = rawFirst ? await gbpsOf(raw[baseline]) : 0;
        const rate = await gbpsOf(runs[name]);
        const rawRate = rawFirst ? rawBefore : await gbpsOf(raw[baseline]);
        if (round < warmup) continue; // the first rounds warm both processes up
        gbps[name].push(rate);
        gbps[baseline].push(rawRate);
        ratios[name].push(rate / rawRate);
      }
    }
  } finally {
    for (const connection of connections) connection.close();
    peer.kill();
  }
  const m = (name: string) => median(gbps[name]);
  const r = (name: string) => median(ratios[name]);
  return {
    tcp_raw_gbps: m("raw_256k"),
    tcp_raw_gbps_4k_writes: m("raw_4k"),
    tcp_transaction_gbps: m("txn_1mib_256k_pipelined"),
    tcp_transaction_gbps_stop_and_wait: m("txn_1mib_256k"),
    tcp_transaction_gbps_16mib_stop_and_wait: m("txn_16mib_256k"),
    tcp_transaction_gbps_16mib: m("txn_16mib_256k_pipelined"),
    tcp_transaction_gbps_4k_writes: m("txn_1mib_4k_pipelined"),
    tcp_transaction_gbps_4k_writes_stop_and_wait: m("txn_1mib_4k"),
    tcp_efficiency: r("txn_1mib_256k_pipelined"),
    tcp_efficiency_stop_and_wait: r("txn_1mib_256k"),
    tcp_efficiency_16mib_stop_and_wait: r("txn_16mib_256k"),
    tcp_efficiency_16mib: r("txn_16mib_256k_pipelined"),
    tcp_efficiency_4k_writes: r("txn_1mib_4k_pipelined"),
    tcp_efficiency_4k_writes_stop_and_wait: r("txn_1mib_4k"),
  };
}

/** Runs the protocol suite; returns its metrics. */
export async function runProtocolSuite(progress: Progress): Promise<Record<string, number>> {
  return { ...framing(progress), ...delta(progress), ...(await tcp(progress)) };
}
