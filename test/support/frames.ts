/**
 * Hand-built Ethernet frames for network tests (a DHCP client's DISCOVER, an ARP request), and
 * the few fields tests read back. Layouts: RFC 826 (ARP), RFC 791 (IPv4), RFC 768 (UDP),
 * RFC 2131/2132 (DHCP).
 */

const ETH_HEADER = 14;
const ETHERTYPE_IPV4 = 0x0800;
const ETHERTYPE_ARP = 0x0806;
const BROADCAST = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
const IPV4_HEADER = 20;
const UDP_HEADER = 8;
const BOOTP_FIXED = 236;
const DHCP_MAGIC = 0x63825363;

function ethernet(dst: readonly number[], src: readonly number[], type: number, payload: Uint8Array): Uint8Array {
  const frame = new Uint8Array(Math.max(60, ETH_HEADER + payload.length));
  frame.set(dst, 0);
  frame.set(src, 6);
  new DataView(frame.buffer).setUint16(12, type);
  frame.set(payload, ETH_HEADER);
  return frame;
}

function ipv4Checksum(header: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < header.length; i += 2) sum += (header[i] << 8) | header[i + 1];
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** A DHCPDISCOVER from `mac`, broadcast, with transaction id `xid`. */
export function dhcpDiscover(mac: readonly number[], xid: number): Uint8Array {
  const options = [53, 1, 1, 55, 3, 1, 3, 6, 255];
  const bootp = new Uint8Array(BOOTP_FIXED + 4 + options.length);
  const b = new DataView(bootp.buffer);
  bootp[0] = 1; // BOOTREQUEST
  bootp[1] = 1; // Ethernet
  bootp[2] = 6;
  b.setUint32(4, xid);
  b.setUint16(10, 0x8000); // answer by broadcast: the client has no address yet
  bootp.set(mac, 28);
  b.setUint32(BOOTP_FIXED, DHCP_MAGIC);
  bootp.set(options, BOOTP_FIXED + 4);
  const udp = new Uint8Array(UDP_HEADER + bootp.length);
  const u = new DataView(udp.buffer);
  u.setUint16(0, 68);
  u.setUint16(2, 67);
  u.setUint16(4, udp.length); // checksum 0: none, which UDP over IPv4 allows
  udp.set(bootp, UDP_HEADER);
  const ip = new Uint8Array(IPV4_HEADER + udp.length);
  const v = new DataView(ip.buffer);
  ip[0] = 0x45;
  v.setUint16(2, ip.length);
  ip[8] = 64;
  ip[9] = 17;
  ip.set([0, 0, 0, 0], 12);
  ip.set([255, 255, 255, 255], 16);
  v.setUint16(10, ipv4Checksum(ip.subarray(0, IPV4_HEADER)));
  ip.set(udp, IPV4_HEADER);
  return ethernet(BROADCAST, mac, ETHERTYPE_IPV4, ip);
}

/** What a DHCP answer to `xid` says, or undefined if `frame` is not one. */
export function dhcpAnswer(frame: Uint8Array, xid: number): { type: number; yourAddress: string; router?: string } | undefined {
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  if (frame.length < ETH_HEADER + IPV4_HEADER + UDP_HEADER + BOOTP_FIXED + 4) return undefined;
  if (view.getUint16(12) !== ETHERTYPE_IPV4 || frame[ETH_HEADER + 9] !== 17) return undefined;
  const ihl = (frame[ETH_HEADER] & 15) * 4;
  const udp = ETH_HEADER + ihl;
  if (view.getUint16(udp) !== 67 || view.getUint16(udp + 2) !== 68) return undefined;
  const bootp = udp + UDP_HEADER;
  if (frame[bootp] !== 2 || view.getUint32(bootp + 4) !== xid || view.getUint32(bootp + BOOTP_FIXED) !== DHCP_MAGIC) return undefined;
  const yourAddress = [...frame.subarray(bootp + 16, bootp + 20)].join(".");
  let type = 0;
  let router: string | undefined;
  for (let at = bootp + BOOTP_FIXED + 4; at + 1 < frame.length && frame[at] !== 255;) {
    const code = frame[at];
    if (code === 0) {
      at++;
      continue;
    }
    const length = frame[at + 1];
    if (code === 53) type = frame[at + 2];
    if (code === 3 && length >= 4) router = [...frame.subarray(at + 2, at + 6)].join(".");
    at += 2 + length;
  }
  return { type, yourAddress, router };
}

/** An ARP request from `mac` at `senderIp` for `targetIp` (dotted quads). */
export function arpRequest(mac: readonly number[], senderIp: string, targetIp: string): Uint8Array {
  const arp = new Uint8Array(28);
  const v = new DataView(arp.buffer);
  v.setUint16(0, 1);
  v.setUint16(2, ETHERTYPE_IPV4);
  arp[4] = 6;
  arp[5] = 4;
  v.setUint16(6, 1); // request
  arp.set(mac, 8);
  arp.set(senderIp.split(".").map(Number), 14);
  arp.set(targetIp.split(".").map(Number), 24);
  return ethernet(BROADCAST, mac, ETHERTYPE_ARP, arp);
}

/** The sender address of an ARP reply for `ip`, or undefined if `frame` is not one. */
export function arpReplyFor(frame: Uint8Array, ip: string): string | undefined {
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  if (frame.length < ETH_HEADER + 28 || view.getUint16(12) !== ETHERTYPE_ARP || view.getUint16(ETH_HEADER + 6) !== 2) return undefined;
  if ([...frame.subarray(ETH_HEADER + 14, ETH_HEADER + 18)].join(".") !== ip) return undefined;
  return [...frame.subarray(ETH_HEADER + 8, ETH_HEADER + 14)].map((b) => b.toString(16).padStart(2, "0")).join(":");
}
