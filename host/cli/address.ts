/** Addresses on the command line: "PORT", "HOST:PORT" or a Unix socket path. */

import type { SocketAddress } from "../protocol/socket-transport.ts";
import { custom, rejectValue, type Option } from "./options.ts";

/** "PORT", "HOST:PORT" (HOST defaults to 127.0.0.1) or a socket path (anything with a slash). */
export function parseAddress(text: string): SocketAddress {
  if (text.includes("/")) return { path: text };
  const colon = text.lastIndexOf(":");
  const [host, port] = colon >= 0 ? [text.slice(0, colon), text.slice(colon + 1)] : ["127.0.0.1", text];
  const n = /^\d+$/.test(port) ? Number(port) : NaN;
  if (!(n >= 0 && n <= 65535) || host === "") rejectValue("expected PORT (0-65535), HOST:PORT or a Unix socket path");
  return { host, port: n };
}

/** An option whose value is an address. */
export function addressOption(help: string): Option<SocketAddress | undefined> {
  return custom("ADDR", `${help}\n(PORT, HOST:PORT or a Unix socket path)`, parseAddress);
}

/** `address` as it would be typed. */
export function formatAddress(address: SocketAddress): string {
  return "path" in address ? address.path : `${address.host ?? "127.0.0.1"}:${address.port}`;
}
