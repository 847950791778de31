/** Talking to the other side of a replication or migration through a transaction sender. */

import { ErrorCode, TandemError } from "../errors.ts";
import type { TransactionSender } from "../protocol/sender.ts";

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
    if (error instanceof TandemError && error.code === ErrorCode.Refused) {
      throw new TandemError(ErrorCode.Failed, `the ${peer} refused (${error.message})${refusedHint}`);
    }
    throw new TandemError(ErrorCode.PeerLost, `the ${peer} was lost: ${error instanceof Error ? error.message : String(error)}`);
  }
}
