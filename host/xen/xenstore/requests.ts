/**
 * xs_wire requests to replies: each payload parsed as docs/misc/xenstore.txt lays it out, the
 * operation done on a {@link XenStoreConnection}, and the reply built with the request's req_id
 * and tx_id. Any failure becomes an ERROR reply with an errno name; nothing here throws.
 */

import { formatPerm, parsePerm } from "./perms.ts";
import type { WatchCallback, XenStoreConnection } from "./store.ts";
import { XENSTORE_PAYLOAD_MAX, XsType, bytesToText, nulTerminated, splitPayload, textToBytes, type XsMessage } from "./wire.ts";
import { XenStoreError, type XsErrno } from "./xs-error.ts";

/** The payload of a success with nothing to return. */
const OK = nulTerminated(["OK"]);

/** Answers one request of `connection`. `onWatchEvent` receives the events of watches it sets. */
export function handleRequest(connection: XenStoreConnection, request: XsMessage, onWatchEvent: WatchCallback): XsMessage {
  try {
    return { type: request.type, reqId: request.reqId, txId: request.txId, payload: perform(connection, request, onWatchEvent) };
  } catch (error) {
    return errorReply(request, error instanceof XenStoreError ? error.errno : "EIO");
  }
}

/** An ERROR reply to `request`. */
export function errorReply(request: Pick<XsMessage, "reqId" | "txId">, errno: XsErrno): XsMessage {
  return { type: XsType.Error, reqId: request.reqId, txId: request.txId, payload: nulTerminated([errno]) };
}

/** A WATCH_EVENT message (req_id and tx_id 0). */
export function watchEventMessage(path: string, token: string): XsMessage {
  return { type: XsType.WatchEvent, reqId: 0, txId: 0, payload: nulTerminated([path, token]) };
}

function perform(connection: XenStoreConnection, request: XsMessage, onWatchEvent: WatchCallback): Uint8Array {
  const { payload, txId: tx } = request;
  switch (request.type) {
    case XsType.Read:
      return connection.read(onlyArgument(payload), tx);
    case XsType.Write: {
      const nul = payload.indexOf(0);
      if (nul < 0) throw new XenStoreError("EINVAL", "WRITE needs a NUL after the path");
      connection.write(bytesToText(payload.subarray(0, nul)), payload.subarray(nul + 1), tx);
      return OK;
    }
    case XsType.Mkdir:
      connection.mkdir(onlyArgument(payload), tx);
      return OK;
    case XsType.Rm:
      connection.rm(onlyArgument(payload), tx);
      return OK;
    case XsType.Directory: {
      const listing = nulTerminated(connection.directory(onlyArgument(payload), tx));
      if (listing.length > XENSTORE_PAYLOAD_MAX) throw new XenStoreError("E2BIG", "the list of children is over XENSTORE_PAYLOAD_MAX; use DIRECTORY_PART");
      return listing;
    }
    case XsType.DirectoryPart: {
      const [path, offset] = exactArguments(payload, 2, "DIRECTORY_PART");
      const { generation, children } = connection.directoryListing(path, tx);
      return directoryPart(generation, nulTerminated(children), decimal(offset, 0xffffffff, "offset"));
    }
    case XsType.GetPerms:
      return nulTerminated(connection.getPerms(onlyArgument(payload), tx).map(formatPerm));
    case XsType.SetPerms: {
      const [path, ...perms] = terminatedArguments(payload, "SET_PERMS");
      if (perms.length === 0) throw new XenStoreError("EINVAL", "SET_PERMS needs a path and at least one permission");
      connection.setPerms(path, perms.map(parsePerm), tx);
      return OK;
    }
    case XsType.Watch: {
      const [path, token] = leadingArguments(payload, 2, "WATCH");
      connection.watch(path, token, onWatchEvent);
      return OK;
    }
    case XsType.Unwatch: {
      const [path, token] = leadingArguments(payload, 2, "UNWATCH");
      connection.unwatch(path, token);
      return OK;
    }
    case XsType.TransactionStart:
      if (tx !== 0) throw new XenStoreError("EBUSY", "TRANSACTION_START inside a transaction");
      return nulTerminated([String(connection.transactionStart())]);
    case XsType.TransactionEnd: {
      const how = onlyArgument(payload);
      if (how !== "T" && how !== "F") throw new XenStoreError("EINVAL", "TRANSACTION_END takes T (commit) or F (abort)");
      connection.transactionEnd(tx, how === "T");
      return OK;
    }
    case XsType.Introduce: {
      const [domid, mfn, port] = leadingArguments(payload, 3, "INTRODUCE");
      // The ring page and event channel are not used: tandem's guests reach the store in-process.
      decimal(mfn, Number.MAX_SAFE_INTEGER, "mfn");
      decimal(port, 0xffffffff, "event channel");
      connection.introduceDomain(decimal(domid, 0xffff, "domid"));
      return OK;
    }
    case XsType.Release:
      connection.releaseDomain(decimal(onlyArgument(payload), 0xffff, "domid"));
      return OK;
    case XsType.GetDomainPath:
      return nulTerminated([connection.getDomainPath(decimal(onlyArgument(payload), 0xffff, "domid"))]);
    case XsType.IsDomainIntroduced:
      return nulTerminated([connection.isDomainIntroduced(decimal(onlyArgument(payload), 0xffff, "domid")) ? "T" : "F"]);
    case XsType.ResetWatches:
      connection.resetWatches();
      return OK;
    case XsType.Control:
      return control(connection, terminatedArguments(payload, "CONTROL"));
    default:
      throw new XenStoreError("ENOSYS", `message type ${request.type} is not supported`);
  }
}

/** CONTROL: only `help` (which lists `help`); the rest of xenstored's commands are not implemented. */
function control(connection: XenStoreConnection, args: string[]): Uint8Array {
  if (!connection.caller.privileged) throw new XenStoreError("EACCES", "CONTROL is for privileged domains");
  if (args[0] === "help") return nulTerminated(["help\n"]);
  throw new XenStoreError("EINVAL", `CONTROL command '${args[0] ?? ""}' is not supported`);
}

/**
 * DIRECTORY_PART's reply: the generation, then whole names from byte `offset` of the NUL-separated
 * list as far as they fit, then an empty string if that reached the end of the list.
 */
export function directoryPart(generation: number, list: Uint8Array, offset: number): Uint8Array {
  const head = textToBytes(`${generation}\0`);
  const start = Math.min(offset, list.length);
  // One byte stays free for the end-of-list marker.
  const room = XENSTORE_PAYLOAD_MAX - head.length - 1;
  let end = start;
  while (end < list.length) {
    const next = list.indexOf(0, end) + 1;
    if (next - start > room) break;
    end = next;
  }
  const complete = end === list.length;
  const reply = new Uint8Array(head.length + end - start + (complete ? 1 : 0));
  reply.set(head, 0);
  reply.set(list.subarray(start, end), head.length);
  return reply;
}

/** The payload's one NUL-terminated string (`<path>|`). */
function onlyArgument(payload: Uint8Array): string {
  return exactArguments(payload, 1, "this request")[0];
}

/** Exactly `count` NUL-terminated strings. */
function exactArguments(payload: Uint8Array, count: number, what: string): string[] {
  const strings = terminatedArguments(payload, what);
  if (strings.length !== count) throw new XenStoreError("EINVAL", `${what} takes ${count} NUL-terminated strings, not ${strings.length}`);
  return strings;
}

/** At least `count` NUL-terminated strings; later ones (reserved fields) are ignored. */
function leadingArguments(payload: Uint8Array, count: number, what: string): string[] {
  const strings = terminatedArguments(payload, what);
  if (strings.length < count) throw new XenStoreError("EINVAL", `${what} takes ${count} NUL-terminated strings, not ${strings.length}`);
  return strings;
}

/** NUL-terminated strings making up the whole payload. */
function terminatedArguments(payload: Uint8Array, what: string): string[] {
  const { strings, rest } = splitPayload(payload);
  if (rest.length > 0) throw new XenStoreError("EINVAL", `${what}: the payload does not end with a NUL`);
  return strings;
}

/** A decimal number 0..max, digits only. */
function decimal(text: string, max: number, what: string): number {
  const value = /^[0-9]{1,16}$/.test(text) ? Number(text) : NaN;
  if (!(value <= max)) throw new XenStoreError("EINVAL", `'${text.slice(0, 20)}' is not a valid ${what}`);
  return value;
}
