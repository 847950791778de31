/**
 * `tandem serve FILE`: serves a disk image over NBD (host/nbd/), the seed's `cowd` daemon in
 * today's form. SIGTERM and SIGINT stop it cleanly (stop accepting, finish what clients sent,
 * flush, close the image, remove the pid file, exit 0); SIGHUP takes a checkpoint of the disk.
 */

import { rmSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { openDisk } from "../disk/registry.ts";
import { ErrorCode, TandemError } from "../errors.ts";
import { NBD_DEFAULT_PORT } from "../nbd/protocol.ts";
import { NbdServer, type NbdAddress, type NbdLogLevel } from "../nbd/server.ts";
import type { Output } from "./commands.ts";

/** The usage lines of `tandem serve`, for the CLI's help. */
export const SERVE_USAGE = `  tandem serve FILE [--format F] [--read-only] [--sync] [--socket PATH | --port N]
             [--bind ADDR] [--export NAME] [--pidfile PATH] [--verbose | --debug]
                             serve a disk image (raw, cow, qcow2 with its backing chain) over
                             NBD for qemu-img, qemu-io, QEMU, nbdinfo, fio, nbd-client: TCP on
                             ADDR (127.0.0.1) port N (${NBD_DEFAULT_PORT}; 0 picks one) or a Unix socket;
                             --sync acknowledges writes only once durable; SIGTERM/SIGINT stop
                             cleanly, SIGHUP takes a checkpoint (flush)`;

/** Serves until SIGTERM or SIGINT; 0 after a clean stop. */
export async function serveCommand(args: readonly string[], io: Output): Promise<number> {
  const { values, positionals } = parseArgs({
    args: [...args],
    allowPositionals: true,
    options: {
      format: { type: "string" },
      "read-only": { type: "boolean" },
      sync: { type: "boolean" },
      socket: { type: "string" },
      port: { type: "string" },
      bind: { type: "string" },
      export: { type: "string" },
      pidfile: { type: "string" },
      verbose: { type: "boolean" },
      debug: { type: "boolean" },
    },
  });
  if (positionals.length !== 1) throw new TandemError(ErrorCode.BadArgument, "serve needs exactly one image FILE");
  if (values.socket !== undefined && (values.port !== undefined || values.bind !== undefined)) {
    throw new TandemError(ErrorCode.BadArgument, "serve takes --socket PATH or --port N [--bind ADDR], not both");
  }
  const address = listenAddress(values.socket, values.port, values.bind);
  const shown = new Set<NbdLogLevel>(["info", ...(values.verbose || values.debug ? (["verbose"] as const) : []), ...(values.debug ? (["debug"] as const) : [])]);
  const disk = openDisk(positionals[0], { format: values.format, readOnly: values["read-only"] === true, sync: values.sync === true });
  let server: NbdServer;
  try {
    server = await NbdServer.listen(
      { disk, exportName: values.export ?? "", description: `tandem ${disk.format} image ${positionals[0]}`, log: (level, message) => shown.has(level) && io.err(`serve: ${message}`) },
      address,
    );
  } catch (error) {
    disk.close();
    throw new TandemError(ErrorCode.BadArgument, `serve: cannot listen (${error instanceof Error ? error.message : String(error)}); choose another --port or --socket`);
  }
  if (values.pidfile !== undefined) writeFileSync(values.pidfile, `${process.pid}\n`);
  io.out(`serve: listening on ${server.uri} (${disk.format}, ${disk.size} bytes${disk.readOnly ? ", read-only" : ""}${values.sync ? ", sync" : ""})`);
  const onHangup = (): void => {
    try {
      server.checkpoint();
    } catch (error) {
      io.err(`serve: checkpoint failed: ${error instanceof Error ? error.message : String(error)}`);
    }
  };
  process.on("SIGHUP", onHangup);
  const signal = await new Promise<string>((resolve) => {
    process.once("SIGINT", () => resolve("SIGINT"));
    process.once("SIGTERM", () => resolve("SIGTERM"));
  });
  process.off("SIGHUP", onHangup);
  io.out(`serve: ${signal}: stopping`);
  await server.close();
  disk.close();
  if (values.pidfile !== undefined) rmSync(values.pidfile, { force: true });
  io.out("serve: stopped");
  return 0;
}

function listenAddress(socket: string | undefined, port: string | undefined, bind: string | undefined): NbdAddress {
  if (socket !== undefined) {
    if (socket === "") throw new TandemError(ErrorCode.BadArgument, "--socket needs a path");
    return { path: socket };
  }
  const number = port === undefined ? NBD_DEFAULT_PORT : Number(port);
  if (!Number.isInteger(number) || number < 0 || number > 65535) throw new TandemError(ErrorCode.BadArgument, `--port must be 0-65535, not '${port}'`);
  return { port: number, host: bind };
}
