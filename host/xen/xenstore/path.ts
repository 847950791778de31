/**
 * xenstore paths (docs/misc/xenstore.txt): `/`-separated, ASCII alphanumerics and `-/_@`, no
 * empty component, no trailing `/` but for the root. A path without a leading `/` is relative to
 * the caller's home, `/local/domain/<domid>`. Paths starting with `@` name special watch events.
 */

import { XenStoreError } from "./xs-error.ts";
import { XENSTORE_ABS_PATH_MAX, XENSTORE_REL_PATH_MAX } from "./wire.ts";

/** Raised on INTRODUCE. */
export const INTRODUCE_DOMAIN = "@introduceDomain";
/** Raised on RELEASE. */
export const RELEASE_DOMAIN = "@releaseDomain";

/** The deepest path accepted (components below the root); xenstored bounds only the length. */
export const MAX_PATH_DEPTH = 128;

const VALID_CHARS = /^[A-Za-z0-9\-/_@]*$/;

/** A caller's path made absolute, and how to show event paths to it again. */
export interface ResolvedPath {
  /** The absolute path, or the special `@name`. */
  absolute: string;
  /** For a relative path, the prefix (`/local/domain/N/`) to strip from event paths. */
  relativeBase: string | undefined;
}

/** `/local/domain/<domid>`, a domain's home. */
export function domainPath(domid: number): string {
  return `/local/domain/${domid}`;
}

/**
 * Checks and resolves a path sent by domain `domid`. Special `@` paths pass only with
 * `allowSpecial` (watches). Throws EINVAL with the reason otherwise.
 */
export function resolvePath(path: string, domid: number, allowSpecial = false): ResolvedPath {
  if (path.length === 0) throw invalid(path, "it is empty");
  if (!VALID_CHARS.test(path)) throw invalid(path, "only letters, digits and - / _ @ are allowed");
  if (path.startsWith("@")) {
    if (!allowSpecial) throw invalid(path, "special @ paths are only for watches");
    if (path.includes("/")) throw invalid(path, "a special @ path has no '/'");
    return { absolute: path, relativeBase: undefined };
  }
  let absolute = path;
  let relativeBase: string | undefined;
  if (!path.startsWith("/")) {
    if (path.length > XENSTORE_REL_PATH_MAX) throw invalid(path, `a relative path is at most ${XENSTORE_REL_PATH_MAX} bytes`);
    relativeBase = `${domainPath(domid)}/`;
    absolute = relativeBase + path;
  }
  if (absolute.length > XENSTORE_ABS_PATH_MAX) throw invalid(path, `a path is at most ${XENSTORE_ABS_PATH_MAX} bytes`);
  if (absolute !== "/" && absolute.endsWith("/")) throw invalid(path, "it ends with '/'");
  if (absolute.includes("//")) throw invalid(path, "it has an empty component ('//')");
  if (pathSegments(absolute).length > MAX_PATH_DEPTH) throw invalid(path, `it is deeper than ${MAX_PATH_DEPTH} components`);
  return { absolute, relativeBase };
}

/** The components of a valid absolute path; none for the root. */
export function pathSegments(absolute: string): string[] {
  return absolute === "/" ? [] : absolute.slice(1).split("/");
}

/** An absolute path from components. */
export function joinSegments(segments: readonly string[]): string {
  return `/${segments.join("/")}`;
}

/** Whether `path` is `ancestor` or below it (xenstore.txt's "child"; every path is below `/`). */
export function isWithin(path: string, ancestor: string): boolean {
  if (ancestor === "/" || path === ancestor) return true;
  return path.startsWith(ancestor) && path.charCodeAt(ancestor.length) === 0x2f;
}

/** An event path as the watcher sees it: relative if it watched a relative path. */
export function presentPath(absolute: string, relativeBase: string | undefined): string {
  return relativeBase !== undefined && absolute.startsWith(relativeBase) ? absolute.slice(relativeBase.length) : absolute;
}

function invalid(path: string, why: string): XenStoreError {
  const shown = path.length > 80 ? `${path.slice(0, 80)}...` : path;
  return new XenStoreError("EINVAL", `'${shown}' is not a valid xenstore path: ${why}`);
}
