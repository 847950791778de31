/**
 * The sender's and the receiver's state machines. States are named after the last protocol
 * step, as in seed 000 (INIT, BEGIN, CONTINUE, COMMIT, CANCEL, ATOMIC, ACK, NACK); ACK, NACK and
 * CANCEL double as "between transactions". Every transition is listed; anything else is
 * E_INVALID_STATE.
 *
 * Sender                                    Receiver
 *   INIT   --recv ACK-->       ACK            INIT   --open (send ACK)-->  ACK
 *   idle   --begin-->          BEGIN          idle   --recv BEGIN-->       BEGIN
 *   idle   --atomic-->         ATOMIC         idle   --recv ATOMIC-->      ATOMIC  (consumer runs)
 *   BEGIN, CONTINUE --write--> CONTINUE       BEGIN, CONTINUE --recv CONTINUE--> CONTINUE
 *   BEGIN, CONTINUE --commit-> COMMIT         BEGIN, CONTINUE --recv COMMIT-->   COMMIT (consumer runs)
 *   BEGIN, CONTINUE --cancel-> CANCEL         BEGIN, CONTINUE --recv CANCEL-->   CANCEL
 *   BEGIN, CONTINUE, COMMIT, ATOMIC           BEGIN, CONTINUE --cancel (send CANCEL)--> CANCEL
 *                  --recv CANCEL--> CANCEL    COMMIT, ATOMIC --applied (send ACK)-->  ACK
 *   COMMIT, ATOMIC --recv ACK-->  ACK         COMMIT, ATOMIC --refused (send NACK)--> NACK
 *   COMMIT, ATOMIC --recv NACK--> NACK
 */

import { ErrorCode, TandemError } from "../errors.ts";

/** Session states. */
export const SessionState = {
  Init: "INIT",
  Begin: "BEGIN",
  Continue: "CONTINUE",
  Commit: "COMMIT",
  Cancel: "CANCEL",
  Atomic: "ATOMIC",
  Ack: "ACK",
  Nack: "NACK",
} as const;
/** One of {@link SessionState}. */
export type SessionState = (typeof SessionState)[keyof typeof SessionState];

/** What can happen to a sender. */
export type SenderEvent = "recv-ack" | "recv-nack" | "recv-cancel" | "begin" | "write" | "commit" | "atomic" | "cancel";
/** What can happen to a receiver. */
export type ReceiverEvent = "open" | "recv-begin" | "recv-continue" | "recv-commit" | "recv-atomic" | "recv-cancel" | "cancel" | "applied" | "refused";

type Table<E extends string> = Record<SessionState, Partial<Record<E, SessionState>>>;
const { Init, Begin, Continue, Commit, Cancel, Atomic, Ack, Nack } = SessionState;

const idleSender: Partial<Record<SenderEvent, SessionState>> = { begin: Begin, atomic: Atomic };
const openSender: Partial<Record<SenderEvent, SessionState>> = { write: Continue, commit: Commit, cancel: Cancel, "recv-cancel": Cancel };
const waitingSender: Partial<Record<SenderEvent, SessionState>> = { "recv-ack": Ack, "recv-nack": Nack, "recv-cancel": Cancel };

const SENDER: Table<SenderEvent> = {
  [Init]: { "recv-ack": Ack },
  [Ack]: idleSender,
  [Nack]: idleSender,
  [Cancel]: idleSender,
  [Begin]: openSender,
  [Continue]: openSender,
  [Commit]: waitingSender,
  [Atomic]: waitingSender,
};

const idleReceiver: Partial<Record<ReceiverEvent, SessionState>> = { "recv-begin": Begin, "recv-atomic": Atomic };
const openReceiver: Partial<Record<ReceiverEvent, SessionState>> = {
  "recv-continue": Continue, "recv-commit": Commit, "recv-cancel": Cancel, cancel: Cancel,
};
const applyingReceiver: Partial<Record<ReceiverEvent, SessionState>> = { applied: Ack, refused: Nack };

const RECEIVER: Table<ReceiverEvent> = {
  [Init]: { open: Ack },
  [Ack]: idleReceiver,
  [Nack]: idleReceiver,
  [Cancel]: idleReceiver,
  [Begin]: openReceiver,
  [Continue]: openReceiver,
  [Commit]: applyingReceiver,
  [Atomic]: applyingReceiver,
};

function next<E extends string>(table: Table<E>, who: string, state: SessionState, event: E): SessionState {
  const to = table[state][event];
  if (to === undefined) throw new TandemError(ErrorCode.InvalidState, `${who}: '${event}' is not allowed in state ${state}`);
  return to;
}

/** The sender's next state, or E_INVALID_STATE. */
export function senderTransition(state: SessionState, event: SenderEvent): SessionState {
  return next(SENDER, "sender", state, event);
}

/** The receiver's next state, or E_INVALID_STATE. */
export function receiverTransition(state: SessionState, event: ReceiverEvent): SessionState {
  return next(RECEIVER, "receiver", state, event);
}

/** True between transactions (the states that allow a new one). */
export function isIdle(state: SessionState): boolean {
  return state === Ack || state === Nack || state === Cancel;
}
