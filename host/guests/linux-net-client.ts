/**
 * A client of the Linux guest's tick service (guest/linux/init.sh, the `net` workload: port 80):
 * the guest sends `tick N TOKEN MD5` ten times a second and `echo LINE` for each line received.
 * The client keeps one TCP connection and judges what came through it across a failover:
 *
 * - ticks numbered 1, 2, 3... with no gap and no duplicate;
 * - each tick's MD5 right: had a frame of an epoch the standby never saw reached the client, the
 *   standby's own bytes for the same stretch of the stream (other tokens) would be spliced in
 *   and break a line's checksum;
 * - every line sent echoed once, in order;
 * - the connection never closed.
 */

import { createHash } from "node:crypto";
import * as net from "node:net";

/** The guest's port of the tick service. */
export const TICK_PORT = 80;

/** What the client saw, judged. */
export interface TickVerdict {
  /** The connection was still open at the end. */
  open: boolean;
  ticks: number;
  lastTick: number;
  /** Tick numbers missing, or seen twice or out of order. */
  tickGaps: number;
  tickDuplicates: number;
  sent: number;
  echoed: number;
  /** Lines echoed in another order, or that were never sent, or sent once and echoed twice. */
  echoErrors: number;
  /** Lines that were neither a well-formed tick nor an echo (corruption, foreign bytes). */
  badLines: number;
  ok: boolean;
}

/** One TCP connection to the guest's tick service through a forwarded host port. */
export class TickClient {
  /** Tick numbers, in the order seen. */
  readonly ticks: number[] = [];
  /** Echoed lines, in the order seen. */
  readonly echoes: string[] = [];
  /** Lines that were neither. */
  readonly bad: string[] = [];
  /** Lines sent, in order. */
  readonly sent: string[] = [];
  /** Why the connection ended, once it did. */
  closed: string | undefined;
  readonly #socket: net.Socket;
  #partial = "";

  constructor(port: number, host = "127.0.0.1") {
    this.#socket = net.connect({ port, host });
    this.#socket.setEncoding("utf8");
    this.#socket.on("data", (text: string) => this.#see(text));
    this.#socket.on("error", (error) => (this.closed = error.message));
    this.#socket.on("close", () => (this.closed ??= "closed"));
  }

  /** Sends `line` for the guest to echo. */
  send(line: string): void {
    this.sent.push(line);
    this.#socket.write(`${line}\n`);
  }

  /** Ends the connection. */
  end(): void {
    this.#socket.destroy();
  }

  /** The verdict on everything seen so far. */
  verdict(): TickVerdict {
    let gaps = 0;
    let duplicates = 0;
    let expected = 1;
    for (const n of this.ticks) {
      if (n === expected) expected++;
      else if (n > expected) {
        gaps += n - expected;
        expected = n + 1;
      } else duplicates++;
    }
    let echoErrors = Math.max(0, this.echoes.length - this.sent.length);
    for (let i = 0; i < Math.min(this.echoes.length, this.sent.length); i++) if (this.echoes[i] !== this.sent[i]) echoErrors++;
    const v = {
      open: this.closed === undefined,
      ticks: this.ticks.length,
      lastTick: this.ticks.at(-1) ?? 0,
      tickGaps: gaps,
      tickDuplicates: duplicates,
      sent: this.sent.length,
      echoed: this.echoes.length,
      echoErrors,
      badLines: this.bad.length,
    };
    return { ...v, ok: v.open && v.ticks > 0 && gaps === 0 && duplicates === 0 && echoErrors === 0 && v.badLines === 0 && v.echoed === v.sent };
  }

  #see(text: string): void {
    const lines = (this.#partial + text).split("\n");
    this.#partial = lines.pop()!;
    for (const line of lines) {
      const tick = /^tick (\d+) (\d+) ([0-9a-f]{32})$/.exec(line);
      const echo = /^echo (.*)$/.exec(line);
      if (tick && createHash("md5").update(`tick ${tick[1]} ${tick[2]}\n`).digest("hex") === tick[3]) this.ticks.push(Number(tick[1]));
      else if (echo) this.echoes.push(echo[1]);
      else this.bad.push(line);
    }
  }
}
