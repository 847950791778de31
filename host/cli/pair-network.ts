/**
 * The network of one host of a pair (`tandem primary|secondary --net`): released frames go to
 * the network, other outputs to the printer; the link is up while this host runs the guest (from
 * the start on a primary, from a takeover on a standby) and down once it is fenced.
 */

import { NET_CHANNEL } from "../emulators/v86/v86-nic.ts";
import { ErrorCode, TandemError } from "../errors.ts";
import { GuestNetwork, type NetworkSpec } from "../net/guest-network.ts";
import type { PairNotice } from "../replication/pair.ts";
import { PairState } from "../replication/pair-state.ts";
import type { ReleasedOutput } from "../replication/release-gate.ts";
import type { CliGuest } from "./guests.ts";
import { netReporter } from "./net-option.ts";
import type { Output } from "./output.ts";

/** A pair host's network, and the hooks that keep it with the running guest. */
export interface PairNetwork {
  /** Outputs released: frames to the network, the rest to `print`. */
  release(print: (o: ReleasedOutput) => void): (o: ReleasedOutput) => void;
  /** The guest runs here now (start of a primary, a takeover): connect, retrying until it works. */
  running(): void;
  /** Told of the pair's notices: a fenced host hangs up, so the new owner can connect. */
  notice(n: PairNotice): void;
  /** Connect now and wait for it (a primary starts only once its network answers). */
  connect(): Promise<void>;
  close(): Promise<void>;
}

/** The network `spec` names, for `guest`'s card. */
export function pairNetwork(guest: CliGuest, spec: NetworkSpec, io: Output, json: boolean): PairNetwork {
  if (!guest.nic) throw new TandemError(ErrorCode.BadArgument, "--net: this guest has no network card to connect");
  const network = new GuestNetwork(guest.nic, spec, netReporter(io, json));
  return {
    release: (print) => (o) => (o.channel === NET_CHANNEL ? network.release(o.data) : print(o)),
    running: () => void network.up().catch(() => {}), // reported, and retried, by the network itself
    notice: (n) => {
      if (n.state === PairState.Fenced) network.down();
    },
    connect: () => network.up(),
    close: () => network.close(),
  };
}
