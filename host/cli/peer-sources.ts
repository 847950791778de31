/**
 * Where the other host of a pair comes from (host/replication/pair.ts's PeerSource): accepted on
 * this host's listening socket, or dialled, again and again until it answers (a host being
 * restarted, or a primary not up yet), or dialled where the witness says the owner listens.
 */

import { connect, listen, type SocketAddress, type TransportServer } from "../protocol/socket-transport.ts";
import type { Transport } from "../protocol/transport.ts";
import type { PeerSource } from "../replication/pair.ts";
import type { Witness } from "../witness/witness.ts";
import { parseAddress } from "./address.ts";

const RETRY_MS = 200;

function aborted(): Error {
  return new Error("stopped");
}

function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}

/** A listening socket whose connections are handed out one at a time, in arrival order. */
export async function acceptedPeers(address: SocketAddress): Promise<{ server: TransportServer; source: PeerSource; close(): Promise<void> }> {
  const waiting: Transport[] = [];
  let wake: (() => void) | undefined;
  const server = await listen(address, (t) => {
    waiting.push(t);
    wake?.();
  });
  const source: PeerSource = async (signal) => {
    while (waiting.length === 0) {
      if (signal.aborted) throw aborted();
      await new Promise<void>((resolve) => {
        wake = resolve;
        signal.addEventListener("abort", () => resolve(), { once: true });
      });
    }
    return waiting.shift()!;
  };
  return {
    server,
    source,
    close: async () => {
      for (const t of waiting.splice(0)) t.close();
      await Promise.race([server.close(), new Promise((r) => setTimeout(r, 100))]);
    },
  };
}

/** Dials `address` until it answers. */
export function dialledPeer(address: SocketAddress): PeerSource {
  return async (signal) => {
    for (;;) {
      if (signal.aborted) throw aborted();
      try {
        return await connect(address);
      } catch {
        await pause(RETRY_MS, signal);
      }
    }
  };
}

/** Dials the owner the witness names (not this side), once it names one with an address. */
export function ownerPeer(witness: Witness): PeerSource {
  return async (signal) => {
    for (;;) {
      if (signal.aborted) throw aborted();
      try {
        const owner = await witness.owner();
        if (owner?.address && owner.side !== witness.side) return await connect(parseAddress(owner.address));
      } catch {
        // etcd or the owner unreachable for now: ask again
      }
      await pause(RETRY_MS, signal);
    }
  };
}
