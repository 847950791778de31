/**
 * `tandem serve FILE`: serves a disk image over NBD (host/nbd/), the seed's `cowd` daemon in
 * today's form. SIGTERM and SIGINT stop it cleanly (stop accepting, finish what clients sent,
 * flush, close the image, remove the pid file, exit 0); SIGHUP takes a checkpoint of the disk.
 */

import { rmSync, writeFileSync } from "node:fs";
import { formatNames, openDisk } from "../disk/registry.ts";
import { ErrorCode, TandemError } from "../errors.ts";
import { NBD_DEFAULT_PORT } from "../nbd/protocol.ts";
import { NbdServer, type NbdAddress, type NbdLogLevel } from "../nbd/server.ts";
import { NbdMetrics } from "../metrics/nbd-metrics.ts";
import type { MetricsServer } from "../metrics/metrics-server.ts";
import { CommandConsole } from "./console.ts";
import { Lifetime } from "./lifetime.ts";
import { METRICS_OPTION, startMetrics } from "./metrics-option.ts";
import { choice, defineCommand, flag, number, text } from "./options.ts";

/** `tandem serve`: serves until SIGTERM or SIGINT; 0 after a clean stop. */
export const serveCommand = defineCommand({
  name: "serve",
  operands: "FILE",
  minOperands: 1,
  maxOperands: 1,
  summary: `Serve a disk image (raw, cow, qcow2 with its backing chain) over NBD, for qemu-img, qemu-io,
QEMU, nbdinfo, fio and nbd-client, on TCP or a Unix socket. SIGTERM/SIGINT stop it cleanly;
SIGHUP takes a checkpoint (flush).`,
  options: {
    format: choice("FMT", "the image's format (probed when absent)", formatNames(), { short: "f" }),
    "read-only": flag("refuse writes"),
    sync: flag("acknowledge writes only once durable"),
    socket: text("PATH", "listen on this Unix socket instead of TCP"),
    port: number("N", "TCP port (0 picks one)", { integer: true, min: 0, max: 65535, shown: String(NBD_DEFAULT_PORT) }),
    bind: text("ADDR", "TCP address to listen on", { shown: "127.0.0.1" }),
    export: text("NAME", "the export's name (default: the empty name)"),
    pidfile: text("PATH", "write the process id here while serving"),
    metrics: METRICS_OPTION,
    verbose: flag("log each connection"),
    debug: flag("log each request"),
  },
}, async ({ values, operands: [file] }, io) => {
  if (values.socket !== undefined && (values.port !== undefined || values.bind !== undefined)) {
    throw new TandemError(ErrorCode.BadArgument, "serve takes --socket PATH or --port N [--bind ADDR], not both");
  }
  const address: NbdAddress = values.socket !== undefined ? { path: values.socket } : { port: values.port ?? NBD_DEFAULT_PORT, host: values.bind };
  const shown = new Set<NbdLogLevel>(["info", ...(values.verbose || values.debug ? (["verbose"] as const) : []), ...(values.debug ? (["debug"] as const) : [])]);
  const lifetime = new Lifetime();
  const ui = new CommandConsole(io, "serve");
  const metrics = new NbdMetrics();
  let metricsServer: MetricsServer | undefined;
  try {
    const disk = openDisk(file, { format: values.format, readOnly: values["read-only"] === true, sync: values.sync === true });
    let server: NbdServer;
    try {
      server = await NbdServer.listen(
        {
          disk, exportName: values.export ?? "", description: `tandem ${disk.format} image ${file}`, log: (level, message) => shown.has(level) && ui.log(message),
          onConnection: metrics.connection, onRequest: metrics.request,
        },
        address,
      );
    } catch (error) {
      disk.close();
      if (error instanceof TandemError) throw error;
      throw new TandemError(ErrorCode.BadArgument, `serve: cannot listen (${error instanceof Error ? error.message : String(error)}); choose another --port or --socket`);
    }
    metrics.serving(server);
    try {
      metricsServer = await startMetrics(values.metrics, metrics, (url) => ui.log("metrics", `${url}/metrics`));
    } catch (error) {
      await server.close();
      disk.close();
      throw error;
    }
    if (values.pidfile !== undefined) writeFileSync(values.pidfile, `${process.pid}\n`);
    if (disk.info().formatSpecific?.corrupt === true && values["read-only"] !== true) {
      io.err(`serve: ${file} is marked corrupt: serving it read-only until it is repaired (tandem img check -r all)`);
    }
    // The ready line on stdout, for scripts that wait for it; the event on stderr, for the log.
    io.out(`serve: listening on ${server.uri} (${disk.format}, ${disk.size} bytes${disk.readOnly ? ", read-only" : ""}${values.sync ? ", sync" : ""})`);
    ui.log("listening", server.uri);
    const onHangup = (): void => {
      try {
        server.checkpoint();
        ui.log("checkpoint", "SIGHUP: flushed");
      } catch (error) {
        ui.log("checkpoint failed", error instanceof Error ? error.message : String(error));
      }
    };
    process.on("SIGHUP", onHangup);
    const signal = await lifetime.stopped();
    process.off("SIGHUP", onHangup);
    ui.log("stopping", signal);
    await metricsServer?.close();
    await server.close();
    disk.close();
    if (values.pidfile !== undefined) rmSync(values.pidfile, { force: true });
    io.out("serve: stopped");
    ui.log("stopped");
    return 0;
  } finally {
    lifetime.dispose();
  }
});
