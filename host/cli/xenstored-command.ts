/**
 * `tandem xenstored --socket PATH`: a xenstore server on a Unix socket (host/xen/xenstore/) for
 * Xen's clients (`XENSTORED_PATH=PATH xenstore-ls`) and frontends in other processes. Runs until
 * SIGINT or SIGTERM, then closes its connections and removes the socket file.
 */

import { parseArgs } from "node:util";
import { ErrorCode, TandemError } from "../errors.ts";
import { serveXenStore } from "../xen/xenstore/server.ts";
import type { Output } from "./commands.ts";

/** Serves until interrupted; 0 after a clean stop. */
export async function xenstoredCommand(args: readonly string[], io: Output): Promise<number> {
  const { values } = parseArgs({ args: [...args], options: { socket: { type: "string" } } });
  if (values.socket === undefined || values.socket === "") {
    throw new TandemError(ErrorCode.BadArgument, "xenstored needs --socket PATH, the Unix socket to listen on");
  }
  const server = await serveXenStore(values.socket);
  io.out(`xenstored: listening on ${server.path} (XENSTORED_PATH=${server.path})`);
  await new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  await server.close();
  io.out("xenstored: stopped");
  return 0;
}
