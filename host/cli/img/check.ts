/**
 * `tandem img check [-f FMT] [-r leaks|all] [--json] FILE`: the image's metadata checked (and
 * repaired), with `qemu-img check`'s exit codes: 0 consistent or repaired, 2 errors left, 3 only
 * leaks left, 63 the format has no metadata to check. A check that cannot complete (the image
 * cannot be opened or read) fails with exit code 1 through the usual error path.
 */

import type { CheckReport } from "../../disk/format.ts";
import { checkImage, formatByName } from "../../disk/registry.ts";
import { choice, defineCommand } from "../options.ts";
import { formatOption, JSON_OPTION } from "./arguments.ts";

/** Exit codes, as qemu-img check's (docs/tools/qemu-img.rst); 1 (the check could not complete) comes from the error path. */
export const CheckExit = { Clean: 0, Errors: 2, Leaks: 3, NotSupported: 63 } as const;

/**
 * The lines of qemu-img check's closing summary. Some formats end their messages with them; the
 * command prints its own from the final counts (after a repair, those of the re-check), so
 * these are dropped from the formats' messages rather than printed twice or stale.
 */
const SUMMARY_LINE = /^(No errors were found on the image\.|\d+ errors were found on the image\.|\d+ leaked clusters were found on the image\.|Data may be corrupted, or further writes to the image may corrupt it\.|This means waste of disk space, but no harm to data\.|Image end offset: \d+)$/;

/** A report's findings, without summary lines. */
function findings(report: CheckReport): string[] {
  return report.messages.filter((line) => !SUMMARY_LINE.test(line));
}

/** `tandem img check`; returns the exit code. */
export const imgCheck = defineCommand({
  name: "img check",
  operands: "FILE",
  minOperands: 1,
  maxOperands: 1,
  summary: "Check (-r: repair) the image's metadata; exit 0 clean, 2 errors, 3 leaks only,\n1 check failed, 63 nothing to check (raw).",
  options: {
    format: formatOption("f", "the image's format (probed when absent)"),
    repair: choice("leaks|all", "repair leaked clusters, or everything", ["leaks", "all"], { short: "r" }),
    json: JSON_OPTION,
  },
}, ({ values, operands: [file] }, io) => {
  const options: { format?: string; repair?: boolean } = {};
  if (values.format !== undefined) options.format = values.format;

  const found = checkImage(file, options);
  if (formatByName(found.format).check === undefined) {
    io.err(`tandem: img check: ${file}: ${found.messages.join("; ")}`);
    return CheckExit.NotSupported;
  }
  // What the format found, before and after a repair (for both outputs); how the repair went (for people only).
  const before = findings(found);
  const after: string[] = [];
  const repairLines: string[] = [];
  let final: CheckReport = found;
  let fixed = { errorsFixed: 0, leaksFixed: 0 };
  const problems = found.errors > 0 || found.leaks > 0;
  if (problems && values.repair === "leaks" && found.errors > 0) {
    // The formats repair leaks and errors in one pass: repairing "leaks only" would touch the errors too.
    before.push("Not repaired: leaks are repaired together with errors here; run with -r all to repair both.");
  } else if (problems && values.repair !== undefined) {
    const repaired = checkImage(file, { ...options, repair: true });
    fixed = { errorsFixed: repaired.errorsFixed, leaksFixed: repaired.leaksFixed };
    repairLines.push(
      "The following inconsistencies were found and repaired:",
      "",
      `    ${repaired.leaksFixed} leaked clusters`,
      `    ${repaired.errorsFixed} corruptions`,
      "",
      "Double checking the fixed image now...",
    );
    final = checkImage(file, options);
    if (final.errors > 0 || final.leaks > 0) after.push(...findings(final));
  }

  if (values.json) io.out(JSON.stringify({ fileName: file, ...final, ...fixed, messages: [...before, ...after] }, null, 4));
  else io.out([...before, ...repairLines, ...after, ...summary(final)].join("\n"));
  if (final.errors > 0) return CheckExit.Errors;
  return final.leaks > 0 ? CheckExit.Leaks : CheckExit.Clean;
});

/** The closing lines of qemu-img check's report. */
function summary(report: CheckReport): string[] {
  const lines: string[] = [];
  if (report.errors === 0 && report.leaks === 0) lines.push("No errors were found on the image.");
  if (report.errors > 0) {
    lines.push(`${report.errors} errors were found on the image.`, "Data may be corrupted, or further writes to the image may corrupt it.");
  }
  if (report.leaks > 0) {
    lines.push(`${report.leaks} leaked clusters were found on the image.`, "This means waste of disk space, but no harm to data.");
  }
  if (report.imageEndOffset !== undefined) lines.push(`Image end offset: ${report.imageEndOffset}`);
  return lines;
}
