/**
 * xenstore watches (docs/misc/xenstore.txt, "Watches"). A watch on a path fires for a change to
 * the path or anything below it; an RM of an ancestor fires it with the watched path itself. The
 * special paths `@introduceDomain` and `@releaseDomain` fire on INTRODUCE and RELEASE. A watch on a
 * relative path is told relative paths.
 */

import { isWithin, presentPath } from "./path.ts";
import type { ChangeEvent } from "./tree.ts";
import { XENSTORE_ABS_PATH_MAX, XENSTORE_PAYLOAD_MAX } from "./wire.ts";
import { XenStoreError } from "./xs-error.ts";

/** Watches one connection may hold at once (xenstored quota-nb-watch-per-domain 128); else E2BIG. */
export const DEFAULT_MAX_WATCHES = 128;

/**
 * The longest token: a WATCH_EVENT carries the event path (up to XENSTORE_ABS_PATH_MAX) and the
 * token, each with a NUL, within XENSTORE_PAYLOAD_MAX.
 */
export const MAX_TOKEN_BYTES = XENSTORE_PAYLOAD_MAX - XENSTORE_ABS_PATH_MAX - 2;

/** One registered watch. */
export interface Watch {
  /** The absolute path watched, or a special `@name`. */
  readonly path: string;
  /** The caller's token, returned with every event. */
  readonly token: string;
  /** For a relative watch, the prefix taken off event paths. */
  readonly relativeBase: string | undefined;
  /** The path as the caller gave it, reported when an ancestor is removed. */
  readonly given: string;
}

/** The watches of one connection. */
export class WatchList {
  readonly #watches: Watch[] = [];
  readonly #max: number;

  constructor(max: number) {
    this.#max = max;
  }

  /** Watches held. */
  get size(): number {
    return this.#watches.length;
  }

  /** Adds a watch; EEXIST if the same path and token are already watched, E2BIG over the limit. */
  add(watch: Watch): void {
    if (this.#watches.some((w) => w.path === watch.path && w.token === watch.token)) {
      throw new XenStoreError("EEXIST", `${watch.given} is already watched with this token`);
    }
    if (this.#watches.length >= this.#max) throw new XenStoreError("E2BIG", `this connection already has ${this.#max} watches (the limit)`);
    this.#watches.push(watch);
  }

  /** Removes and returns the watch with this (absolute or special) path and token; ENOENT if there is none. */
  remove(path: string, token: string): Watch {
    const at = this.#watches.findIndex((w) => w.path === path && w.token === token);
    if (at < 0) throw new XenStoreError("ENOENT", `${path} is not watched with this token`);
    return this.#watches.splice(at, 1)[0];
  }

  /** Removes every watch. */
  clear(): void {
    this.#watches.length = 0;
  }

  /** Each watch `event` fires, with the path to report. */
  *matching(event: Pick<ChangeEvent, "path" | "recursive">): Generator<{ watch: Watch; path: string }> {
    for (const watch of this.#watches) {
      const path = eventPathFor(watch, event);
      if (path !== undefined) yield { watch, path };
    }
  }
}

/** The path `watch` reports for `event`, or undefined if it does not fire. */
export function eventPathFor(watch: Watch, event: Pick<ChangeEvent, "path" | "recursive">): string | undefined {
  const special = watch.path.startsWith("@");
  if (special !== event.path.startsWith("@")) return undefined;
  if (special) return watch.path === event.path ? watch.path : undefined;
  if (isWithin(event.path, watch.path)) return presentPath(event.path, watch.relativeBase);
  if (event.recursive && isWithin(watch.path, event.path)) return watch.given;
  return undefined;
}
