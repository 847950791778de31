/**
 * A DNS server for network tests, on the host's loopback: it answers A queries for one name
 * with one address and every other query with NXDOMAIN. passt hands the guest the gateway's
 * address as its resolver and maps that address to the host's loopback, so a guest lookup
 * reaches this, and nothing leaves the machine. Message layout: RFC 1035, section 4.1.
 */

import * as dgram from "node:dgram";

const HEADER = 12;
const TYPE_A = 1;
const CLASS_IN = 1;
const FLAG_RESPONSE = 0x8000;
const FLAG_RECURSION_AVAILABLE = 0x0080;
const RCODE_NXDOMAIN = 3;

/** A running responder. */
export interface DnsResponder {
  /** Queries answered so far. */
  readonly queries: string[];
  close(): Promise<void>;
}

/** The name a query asks for and where its question ends, or undefined if it is not a plain query. */
function question(message: Uint8Array): { name: string; end: number; type: number } | undefined {
  if (message.length < HEADER + 5) return undefined;
  const labels: string[] = [];
  let at = HEADER;
  for (let guard = 0; guard < 128; guard++) {
    const length = message[at];
    if (length === undefined || length > 63) return undefined;
    at++;
    if (length === 0) break;
    labels.push(new TextDecoder().decode(message.subarray(at, at + length)));
    at += length;
  }
  if (at + 4 > message.length) return undefined;
  const view = new DataView(message.buffer, message.byteOffset, message.byteLength);
  return { name: labels.join(".").toLowerCase(), end: at + 4, type: view.getUint16(at) };
}

/** Starts a responder on 127.0.0.1:`port` that answers `name` with `address` (dotted quad). */
export function startDnsResponder(name: string, address: string, port = 53): Promise<DnsResponder> {
  const socket = dgram.createSocket("udp4");
  const queries: string[] = [];
  socket.on("message", (message: Uint8Array, from) => {
    const q = question(message);
    if (!q) return;
    queries.push(q.name);
    const known = q.name === name.toLowerCase() && q.type === TYPE_A;
    const answer = known ? 16 : 0;
    const reply = new Uint8Array(q.end + answer);
    reply.set(message.subarray(0, q.end));
    const view = new DataView(reply.buffer);
    view.setUint16(2, FLAG_RESPONSE | FLAG_RECURSION_AVAILABLE | (view.getUint16(2) & 0x0100) | (known ? 0 : RCODE_NXDOMAIN));
    view.setUint16(4, 1); // one question
    view.setUint16(6, known ? 1 : 0);
    view.setUint16(8, 0);
    view.setUint16(10, 0);
    if (known) {
      view.setUint16(q.end, 0xc000 | HEADER); // the name, as a pointer to the question's
      view.setUint16(q.end + 2, TYPE_A);
      view.setUint16(q.end + 4, CLASS_IN);
      view.setUint32(q.end + 6, 60); // TTL
      view.setUint16(q.end + 10, 4);
      reply.set(address.split(".").map(Number), q.end + 12);
    }
    socket.send(reply, from.port, from.address);
  });
  return new Promise((resolve, reject) => {
    socket.once("error", reject);
    socket.bind(port, "127.0.0.1", () => {
      socket.off("error", reject);
      resolve({ queries, close: () => new Promise<void>((done) => socket.close(() => done())) });
    });
  });
}
