/** Lines from a child process's pipe. */

import type { Readable } from "node:stream";

/** Calls `line` with each whole line `stream` carries (without its newline), and the rest at its end. */
export function forwardLines(stream: Readable, line: (text: string) => void): void {
  let pending = "";
  const decoder = new TextDecoder();
  stream.on("data", (chunk: Uint8Array) => {
    pending += decoder.decode(chunk, { stream: true });
    const lines = pending.split("\n");
    pending = lines.pop()!;
    for (const text of lines) line(text);
  });
  stream.on("end", () => {
    if (pending !== "") line(pending);
    pending = "";
  });
}
