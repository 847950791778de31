/**
 * `--net`: where a guest's network is, for the commands that run one host of a pair.
 *
 *   --net passt[:OPTIONS]   this process starts passt (Debian's passt) when its guest first
 *                           runs; OPTIONS, comma-separated: tcp=SPEC and udp=SPEC (passt's -t
 *                           and -u, repeatable: "8080:80", "127.0.0.1/8080:80"), mtu=N,
 *                           socket=PATH (where passt listens; default a private folder)
 *   --net socket:PATH       connect to the passt (or any QEMU stream peer) listening at PATH
 *
 * A passt that tandem starts outlives it, as the network outlives either host: the standby of a
 * killed primary connects to the same socket (`--net socket:PATH`) and the guest's TCP
 * connections go on. It is stopped when the process that started it stops cleanly while still
 * running the guest (not after it was fenced: the new owner is using it).
 */

import type { NetworkEvent, NetworkSpec } from "../net/guest-network.ts";
import { custom, rejectValue, type Option } from "./options.ts";
import type { Output } from "./output.ts";

const EXPECTED = "expected passt, passt:OPTIONS (tcp=SPEC,udp=SPEC,mtu=N,socket=PATH) or socket:PATH";

/** Reads a --net value. */
export function parseNetSpec(text: string): NetworkSpec {
  if (text.startsWith("socket:")) {
    const path = text.slice("socket:".length);
    return path === "" ? rejectValue("socket: needs the path of a passt socket") : { kind: "socket", path };
  }
  if (text !== "passt" && !text.startsWith("passt:")) rejectValue(EXPECTED);
  const tcp: string[] = [];
  const udp: string[] = [];
  let mtu: number | undefined;
  let socketPath: string | undefined;
  for (const setting of text === "passt" ? [] : text.slice("passt:".length).split(",")) {
    const equals = setting.indexOf("=");
    const [key, value] = equals < 0 ? [setting, ""] : [setting.slice(0, equals), setting.slice(equals + 1)];
    if (value === "") rejectValue(`passt option '${setting}': ${EXPECTED}`);
    switch (key) {
      case "tcp":
        tcp.push(value);
        break;
      case "udp":
        udp.push(value);
        break;
      case "mtu":
        mtu = /^\d+$/.test(value) ? Number(value) : NaN;
        if (!(mtu >= 576 && mtu <= 65520)) rejectValue(`passt mtu=${value}: expected a whole number from 576 to 65520`);
        break;
      case "socket":
        socketPath = value;
        break;
      default:
        rejectValue(`unknown passt option '${key}': ${EXPECTED}`);
    }
  }
  return {
    kind: "passt",
    passt: {
      tcpForwards: tcp,
      ...(mtu !== undefined ? { mtu } : {}),
      ...(socketPath !== undefined ? { socketPath } : {}),
      ...(udp.length > 0 ? { extraArgs: udp.flatMap((spec) => ["-u", spec]) } : {}),
      outliveCaller: true,
    },
  };
}

/** The --net option of `tandem primary` and `tandem secondary`. */
export const NET_OPTION: Option<NetworkSpec | undefined> = custom(
  "SPEC",
  "connect the guest's network card. passt[:OPTIONS]: start passt when\n" +
    "the guest first runs here (OPTIONS, comma-separated: tcp=SPEC and\n" +
    "udp=SPEC as passt's -t and -u, mtu=N, socket=PATH); socket:PATH: a\n" +
    "passt already running. A standby connects when it takes over: give\n" +
    "it socket:PATH of its primary's passt",
  parseNetSpec,
);

/** Tells of the network's events: a JSON line with --json, else a line on stderr. */
export function netReporter(io: Output, json: boolean): (event: NetworkEvent) => void {
  return (e) => {
    if (json) {
      io.out(JSON.stringify({ type: "network", ...e }));
      return;
    }
    io.err(`tandem: network: ${describe(e)}`);
  };
}

function describe(e: NetworkEvent): string {
  switch (e.event) {
    case "started":
      return `started passt (pid ${e.pid}) on ${e.socket}; it outlives this process, so that a standby given --net socket:${e.socket} can take over its connections`;
    case "connected":
      return `connected to the network at ${e.socket}`;
    case "lost":
      return `lost the network at ${e.socket} (${e.reason}); connecting again`;
    case "unreachable":
      return `cannot reach the network at ${e.socket} (${e.reason}); trying again each second`;
    case "disconnected":
      return `disconnected from the network at ${e.socket}`;
  }
}
