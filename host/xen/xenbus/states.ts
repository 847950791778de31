/**
 * The xenbus states (`enum xenbus_state`, xen/include/public/io/xenbus.h, Xen 4.17) and the two
 * state machines that walk them: the backend's and the frontend's. Every transition is listed;
 * anything else is E_INVALID_STATE. The events are named after what causes them, following
 * Linux's blkback/blkfront and QEMU's xen-bus (../shared/reference/xen-blkif.md section 5).
 *
 * Backend                                              Frontend
 *   Initialising --published--> InitWait                 Unknown, Closed --start--> Initialising
 *   InitWait  --connect--> Connected                     Initialising --initialise--> Initialised
 *   Initialising, InitWait, Connected                    Initialised  --connect--> Connected
 *             --close--> Closing                         Initialising, Initialised, Connected
 *   any but Unknown --unplug--> Closing                              --close--> Closing
 *             (the toolstack's write of state=5)         Initialising, Initialised, Connected, Closing
 *   Initialising, InitWait, Connected, Closing                       --closed--> Closed
 *             --closed--> Closed
 *   Closed    --reconnect--> InitWait
 *             (online, and a new frontend is Initialising)
 */

import { ErrorCode, TandemError } from "../../errors.ts";

/** The states, with xenbus.h's values (written to `<dir>/state` in decimal). */
export const XenbusState = {
  Unknown: 0,
  Initialising: 1,
  InitWait: 2,
  Initialised: 3,
  Connected: 4,
  Closing: 5,
  Closed: 6,
  Reconfiguring: 7,
  Reconfigured: 8,
} as const;
/** One of {@link XenbusState}. */
export type XenbusState = (typeof XenbusState)[keyof typeof XenbusState];

/** What moves a backend. */
export type BackendEvent = "published" | "connect" | "close" | "unplug" | "closed" | "reconnect";
/** What moves a frontend. */
export type FrontendEvent = "start" | "initialise" | "connect" | "close" | "closed";

type Table<E extends string> = Partial<Record<XenbusState, Partial<Record<E, XenbusState>>>>;
const { Unknown, Initialising, InitWait, Initialised, Connected, Closing, Closed } = XenbusState;

const BACKEND: Table<BackendEvent> = {
  [Initialising]: { published: InitWait, close: Closing, unplug: Closing, closed: Closed },
  [InitWait]: { connect: Connected, close: Closing, unplug: Closing, closed: Closed },
  [Connected]: { close: Closing, unplug: Closing, closed: Closed },
  [Closing]: { unplug: Closing, closed: Closed },
  [Closed]: { unplug: Closing, reconnect: InitWait },
};

const FRONTEND: Table<FrontendEvent> = {
  [Unknown]: { start: Initialising },
  [Closed]: { start: Initialising },
  [Initialising]: { initialise: Initialised, close: Closing, closed: Closed },
  [Initialised]: { connect: Connected, close: Closing, closed: Closed },
  [Connected]: { close: Closing, closed: Closed },
  [Closing]: { closed: Closed },
};

function next<E extends string>(table: Table<E>, who: string, state: XenbusState, event: E): XenbusState {
  const to = table[state]?.[event];
  if (to === undefined) throw new TandemError(ErrorCode.InvalidState, `xenbus ${who}: '${event}' is not allowed in state ${stateName(state)}`);
  return to;
}

/** The backend's next state, or E_INVALID_STATE. */
export function backendTransition(state: XenbusState, event: BackendEvent): XenbusState {
  return next(BACKEND, "backend", state, event);
}

/** The frontend's next state, or E_INVALID_STATE. */
export function frontendTransition(state: XenbusState, event: FrontendEvent): XenbusState {
  return next(FRONTEND, "frontend", state, event);
}

/** The state's name, e.g. "InitWait (2)". */
export function stateName(state: number): string {
  const name = Object.entries(XenbusState).find(([, value]) => value === state)?.[0];
  return `${name ?? "invalid"} (${state})`;
}

/**
 * A `state` node's value as a state: Unknown when the node is missing or holds anything but one
 * of the nine values in decimal, as Linux's xenbus_read_driver_state does.
 */
export function parseXenbusState(text: string | undefined): XenbusState {
  if (text === undefined || !/^[0-8]$/.test(text)) return Unknown;
  return Number(text) as XenbusState;
}
