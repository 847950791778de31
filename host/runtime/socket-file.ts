/**
 * The file of a Unix socket a server is about to listen on. A server killed with SIGKILL leaves
 * its socket file, and listening there fails with EADDRINUSE: a file nothing accepts on is stale
 * and is removed. A live one (a server accepts a connection on it) is refused, as is any file
 * that is not a socket. A path in a missing directory is named as such, where the system would
 * say EACCES or ENOENT.
 */

import { lstatSync, rmSync, statSync, type Stats } from "node:fs";
import { connect } from "node:net";
import { dirname } from "node:path";
import { ErrorCode, TandemError } from "../errors.ts";

/** How long a probe waits for a live server to accept: a local accept takes microseconds. */
const PROBE_TIMEOUT_MS = 1000;

/**
 * Makes `path` ready to listen on: removes a stale socket file; throws E_BAD_ARGUMENT if its
 * directory is missing, if it is not a socket, or if a server is listening on it.
 *
 * The probe is a connection that closes at once: a live server sees a peer that said nothing.
 */
export async function claimSocketPath(path: string): Promise<void> {
  const directory = dirname(path);
  let dir: Stats;
  try {
    dir = statSync(directory);
  } catch {
    throw new TandemError(ErrorCode.BadArgument, `cannot listen on ${path}: the directory ${directory} does not exist`);
  }
  if (!dir.isDirectory()) throw new TandemError(ErrorCode.BadArgument, `cannot listen on ${path}: ${directory} is not a directory`);
  let file: Stats;
  try {
    file = lstatSync(path);
  } catch {
    return; // nothing there
  }
  if (!file.isSocket()) throw new TandemError(ErrorCode.BadArgument, `${path} exists and is not a socket; choose another socket path`);
  if (await accepts(path)) throw new TandemError(ErrorCode.BadArgument, `a server is already listening on ${path}; stop it or choose another socket path`);
  rmSync(path, { force: true });
}

/** Whether something accepts connections on the socket file `path`. */
function accepts(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = connect({ path });
    const done = (live: boolean) => {
      clearTimeout(timer);
      probe.destroy();
      resolve(live);
    };
    // A full backlog leaves the connect pending: someone is listening.
    const timer = setTimeout(() => done(true), PROBE_TIMEOUT_MS);
    probe.once("connect", () => done(true));
    probe.once("error", () => done(false));
  });
}
