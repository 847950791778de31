/**
 * v86's first network card (its NE2000, or virtio-net) bridged to a tandem machine's outputs and
 * inputs. v86 puts every frame the guest transmits on its bus as `net0-send`, and takes frames
 * for the guest as `net0-receive` (v86 src/ne2k.js, src/virtio_net.js).
 *
 * - A transmitted frame becomes an output of channel {@link NET_CHANNEL} in the epoch that sent
 *   it, so the replication engine holds it until that epoch's checkpoint is acknowledged, as
 *   Remus holds packets with its plug qdisc.
 * - A frame from the network is given to the card only while the guest runs. Handing it over
 *   while paused would change the card's state (its ring and interrupt status) after the
 *   checkpoint captured it, so it waits in a bounded queue for `resume()`; past the bound frames
 *   are dropped, as a full receive ring drops them, and the sender's TCP resends.
 */

import type { MachineOutput } from "../../machine/machine.ts";
import type { V86NetworkBus } from "./v86-internals.ts";

/** The output channel of frames the guest sends. */
export const NET_CHANNEL = "net0";

/** Frames kept for a paused guest; a checkpoint's pause is a few ms, a takeover's under a second. */
const MAX_QUEUED_FRAMES = 512;

/** Counters of the bridge. */
export interface V86NicStats {
  sent: number;
  received: number;
  /** Frames from the network dropped because the guest was paused and the queue was full. */
  dropped: number;
}

/** The bridge between v86's first NIC and a machine's outputs and inputs. */
export class V86Nic {
  readonly stats: V86NicStats = { sent: 0, received: 0, dropped: 0 };
  readonly #emulator: V86NetworkBus;
  #queue: Uint8Array[] = [];
  #running = false;

  constructor(emulator: V86NetworkBus, output: (o: MachineOutput) => void) {
    this.#emulator = emulator;
    emulator.add_listener("net0-send", (frame: Uint8Array) => {
      this.stats.sent++;
      output({ channel: NET_CHANNEL, data: frame.slice() }); // v86 reuses its transmit buffer
    });
  }

  /** Gives `frame` to the guest's card now, or at the next resume. */
  receive(frame: Uint8Array): void {
    if (this.#running) {
      this.#deliver(frame);
    } else if (this.#queue.length < MAX_QUEUED_FRAMES) {
      this.#queue.push(frame);
    } else {
      this.stats.dropped++;
    }
  }

  /** The guest stopped: frames wait from now on. */
  paused(): void {
    this.#running = false;
  }

  /** The guest runs: waiting frames go to the card, in order. */
  resumed(): void {
    this.#running = true;
    const waiting = this.#queue;
    this.#queue = [];
    for (const frame of waiting) this.#deliver(frame);
  }

  /** Forgets waiting frames (a standby's replica must not receive what reached the old primary). */
  discardQueued(): void {
    this.#queue = [];
  }

  #deliver(frame: Uint8Array): void {
    this.stats.received++;
    this.#emulator.bus.send("net0-receive", frame);
  }
}
