/**
 * The sender's and the receiver's state machines. States are named after the last protocol
 * step, as in seed 000 (INIT, BEGIN, CONTINUE, COMMIT, CANCEL, ATOMIC, ACK, NACK); ACK, NACK and
 * CANCEL double as "between transactions". Every transition is listed; anything else is
 * E_INVALID_STATE.
 *
 * The sender's state is that of its latest transaction. With a window of more than one
 * (pipelining), committed transactions awaiting their answers are a separate queue in the
 * sender: `begin` and `atomic` are then allowed in COMMIT and ATOMIC too (the sender itself
 * holds them back while the window is full), and an answer to an earlier transaction than the
 * latest ("recv-earlier") leaves the state as it is. With a window of one neither happens: a
 * commit holds the sender until its answer, as in the seed's stop-and-wait.
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
 *   COMMIT, ATOMIC --begin/atomic--> BEGIN/ATOMIC          (pipelined: window > 1, not full)
 *   BEGIN, CONTINUE, COMMIT, ATOMIC, CANCEL --recv-earlier--> unchanged   (pipelined)
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

/**
 * What can happen to a sender. "recv-ack", "recv-nack" and "recv-cancel" are answers to (or the
 * receiver's cancel of) the latest transaction; "recv-earlier" is an answer of any kind to a
 * transaction committed before the latest one, which only a pipelining sender has.
 */
export type SenderEvent = "recv-ack" | "recv-nack" | "recv-cancel" | "recv-earlier" | "begin" | "write" | "commit" | "atomic" | "cancel";
/** What can happen to a receiver. */
export type ReceiverEvent = "open" | "recv-begin" | "recv-continue" | "recv-commit" | "recv-atomic" | "recv-cancel" | "cancel" | "applied" | "refused";

type Table<E extends string> = Record<SessionState, Partial<Record<E, SessionState>>>;
const { Init, Begin, Continue, Commit, Cancel, Atomic, Ack, Nack } = SessionState;

const idleSender: Partial<Record<SenderEvent, SessionState>> = { begin: Begin, atomic: Atomic };
const openSender: Partial<Record<SenderEvent, SessionState>> = { write: Continue, commit: Commit, cancel: Cancel, "recv-cancel": Cancel };
// begin and atomic here are pipelining: the next transaction starts before this one's answer.
const waitingSender: Partial<Record<SenderEvent, SessionState>> = { "recv-ack": Ack, "recv-nack": Nack, "recv-cancel": Cancel, begin: Begin, atomic: Atomic };

const SENDER: Table<SenderEvent> = {
  [Init]: { "recv-ack": Ack },
  [Ack]: idleSender,
  [Nack]: idleSender,
  // The latest transaction was cancelled by this side while earlier ones still await answers.
  [Cancel]: { ...idleSender, "recv-earlier": Cancel },
  [Begin]: { ...openSender, "recv-earlier": Begin },
  [Continue]: { ...openSender, "recv-earlier": Continue },
  [Commit]: { ...waitingSender, "recv-earlier": Commit },
  [Atomic]: { ...waitingSender, "recv-earlier": Atomic },
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
