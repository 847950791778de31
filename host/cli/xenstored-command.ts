/**
 * `tandem xenstored --socket PATH`: a xenstore server on a Unix socket (host/xen/xenstore/) for
 * Xen's clients (`XENSTORED_PATH=PATH xenstore-ls`) and frontends in other processes. Runs until
 * SIGINT or SIGTERM, then closes its connections and removes the socket file.
 */

import type { MetricsServer } from "../metrics/metrics-server.ts";
import { XenStoreMetrics } from "../metrics/xenstore-metrics.ts";
import { serveXenStore } from "../xen/xenstore/server.ts";
import { CommandConsole } from "./console.ts";
import { Lifetime } from "./lifetime.ts";
import { METRICS_OPTION, startMetrics } from "./metrics-option.ts";
import { defineCommand, required, text } from "./options.ts";

/** `tandem xenstored`: serves until interrupted; 0 after a clean stop. */
export const xenstoredCommand = defineCommand({
  name: "xenstored",
  summary: "Serve a xenstore on a Unix socket (xs_wire protocol), for Xen's xenstore-utils\n(XENSTORED_PATH=PATH) and frontends; runs until SIGINT/SIGTERM, then removes the socket.",
  options: {
    socket: required(text("PATH", "the Unix socket to listen on")),
    metrics: METRICS_OPTION,
  },
}, async ({ values }, io) => {
  const lifetime = new Lifetime();
  const ui = new CommandConsole(io, "xenstored");
  const metrics = new XenStoreMetrics();
  let metricsServer: MetricsServer | undefined;
  try {
    const server = await serveXenStore(values.socket, { onConnection: metrics.connection, onRequest: metrics.request });
    metrics.serving(server);
    try {
      metricsServer = await startMetrics(values.metrics, metrics, (url) => ui.log("metrics", `${url}/metrics`));
    } catch (error) {
      await server.close();
      throw error;
    }
    io.out(`xenstored: listening on ${server.path} (XENSTORED_PATH=${server.path})`);
    ui.log("listening", server.path);
    const signal = await lifetime.stopped();
    ui.log("stopping", signal);
    await metricsServer?.close();
    await server.close();
    io.out("xenstored: stopped");
    ui.log("stopped");
    return 0;
  } finally {
    lifetime.dispose();
  }
});
