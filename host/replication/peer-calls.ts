/** Talking to the other side of a replication or migration through a transaction sender. */

import { ErrorCode, TandemError } from "../errors.ts";
import type { GuestIdentity } from "../machine/guest-identity.ts";
import type { TransactionSender } from "../protocol/sender.ts";
import type { StreamWriter } from "../protocol/stream/writer.ts";

/** Sends `bytes` as one transaction and waits for its ACK; `bytes` must not change until then. */
export async function sendTransaction(sender: TransactionSender, bytes: Uint8Array): Promise<void> {
  await sender.begin();
  await sender.writeNoCopy(bytes);
  await sender.commit();
}

/**
 * Awaits `call` and maps what the transaction layer reports to what it means here: a refusal is
 * E_FAILED (with `refusedHint`), anything else means the `peer` is gone (E_PEER_LOST).
 */
export async function peerCall<T>(peer: string, call: Promise<T>, refusedHint = ""): Promise<T> {
  try {
    return await call;
  } catch (error) {
    throw peerError(peer, error, refusedHint);
  }
}

/**
 * Sends the stream header alone, as the first transaction, so that the peer checks the guest it
 * describes before any checkpoint is captured. The peer refuses (NACK) a header only when its
 * machine is not this guest; the NACK carries no reason, so the error sends the user to the
 * peer's log, which lists the fields that differ.
 */
export async function sendStreamHeader(sender: TransactionSender, writer: StreamWriter, peer: string, identity: GuestIdentity | undefined): Promise<void> {
  writer.writeHeader();
  try {
    await sendTransaction(sender, writer.take());
  } catch (error) {
    if (error instanceof TandemError && error.code === ErrorCode.Refused) {
      const id = identity ? ` (identity ${identity.digest.slice(0, 12)}: ${identity.fields.filter((f) => f.kind === "value").map((f) => `${f.name} ${f.value}`).join(", ")})` : "";
      throw new TandemError(ErrorCode.GuestMismatch,
        `the ${peer} refused this guest${id}: its machine is built from a different guest description or memory size; its log lists the fields that differ`);
    }
    throw peerError(peer, error, "");
  }
}

/** What a failed call to the peer means here: a refusal is E_FAILED, anything else E_PEER_LOST. */
function peerError(peer: string, error: unknown, refusedHint: string): TandemError {
  if (error instanceof TandemError && error.code === ErrorCode.Refused) {
    return new TandemError(ErrorCode.Failed, `the ${peer} refused (${error.message})${refusedHint}`);
  }
  return new TandemError(ErrorCode.PeerLost, `the ${peer} was lost: ${error instanceof Error ? error.message : String(error)}`);
}
