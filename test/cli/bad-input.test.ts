import { suite } from "uvu";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { COMMANDS, reportError, runCli } from "../../host/cli/commands.ts";
import { IMG_COMMANDS } from "../../host/cli/img-command.ts";
import type { Command, Option } from "../../host/cli/options.ts";
import { hasStackTrace, inBatches, runTandem } from "../support/tandem-process.ts";

const test = suite("tandem, every subcommand: --help, unknown options and a bad value of every option answered at once (exit 2, coded, no stack)");

/** A usage error must end the process within this, startup of the runtime included, on a loaded 2-core machine. */
const LIMIT_MS = 20_000;
/** Processes at once. */
const PARALLEL = 3;

/** Values that some option refuses; each option gets the first its own check refuses. */
const CANDIDATES = ["abc", "-5", "", "1e999", "0x10", "x:99999"];

/** The first candidate `option` refuses, or undefined if it takes them all (checked after parsing, e.g. -o). */
function badValue(option: Option<unknown>): string | undefined {
  for (const candidate of CANDIDATES) {
    try {
      option.read(candidate, option.initial);
    } catch {
      return candidate;
    }
  }
  return undefined;
}

const ALL: readonly Command[] = [...COMMANDS, ...IMG_COMMANDS];
const words = (command: Command) => command.spec.name.split(" ");

interface Case {
  args: string[];
  /** What stderr must say. */
  says: string[];
}

const cases: Case[] = [];
const unchecked: string[] = [];
for (const command of ALL) {
  cases.push({ args: [...words(command), "--no-such-option"], says: ["E_BAD_ARGUMENT", "unknown option '--no-such-option'"] });
  for (const [name, option] of Object.entries(command.spec.options)) {
    if (option.value === undefined) continue; // flags: `--flag=x` is covered by test/cli/options.test.ts
    const bad = badValue(option);
    if (bad === undefined) {
      unchecked.push(`${command.spec.name} --${name}`);
      continue;
    }
    cases.push({ args: [...words(command), `--${name}`, bad], says: ["E_BAD_ARGUMENT", `--${name} ${bad}:`] });
  }
}

test("every option with a value has a value it refuses, except lists checked after parsing", () => {
  assert.equal(unchecked, ["img create --options", "img convert --options"]);
  assert.ok(cases.length > 40, `${cases.length} cases`);
});

/** What `tandem args...` answers when run as main.ts runs it, in this process. */
async function runInProcess(args: readonly string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const io = { out: (line: string) => void out.push(line), err: (line: string) => void err.push(line) };
  let code: number;
  try {
    code = await runCli(args, io);
  } catch (error) {
    code = reportError(error, io, undefined);
  }
  return { code, stdout: out.join("\n"), stderr: err.join("\n") };
}

function checkRefused(c: Case, r: { code: number | null; stdout: string; stderr: string }): void {
  const what = `tandem ${c.args.join(" ")}: ${r.stderr}`;
  assert.is(r.code, 2, what);
  for (const text of c.says) assert.ok(r.stderr.includes(text), `says '${text}': ${what}`);
  assert.match(r.stderr, "--help' for usage", what);
  assert.not.ok(hasStackTrace(r.stderr), `no stack trace: ${what}`);
  assert.is(r.stdout, "", what);
}

// Every case is answered by the option tables before a command does anything, so they all run
// in this process; a sample, one unknown option and one bad value per subcommand, also runs as
// processes (a process per case took minutes on each runtime).
test("bad values and unknown options: exit 2, a coded message naming the option, no stack", async () => {
  for (const c of cases) checkRefused(c, await runInProcess(c.args));
});

test("as processes, the same within seconds: an unknown option and a bad value of each subcommand", async () => {
  const sample = ALL.flatMap((command) => {
    const prefix = words(command).join(" ");
    const own = cases.filter((c) => c.args.slice(0, words(command).length).join(" ") === prefix && c.args.length === words(command).length + (c.says[1].startsWith("unknown") ? 1 : 2));
    return own.slice(0, 2);
  });
  assert.ok(sample.length >= ALL.length, `${sample.length} process cases`);
  const results = await inBatches(sample.map((c) => () => runTandem(c.args, LIMIT_MS)), PARALLEL);
  let slowest = 0;
  results.forEach((r, i) => {
    assert.not.ok(r.timedOut, `still running after ${LIMIT_MS} ms: tandem ${sample[i].args.join(" ")}`);
    checkRefused(sample[i], r);
    slowest = Math.max(slowest, r.ms);
  });
  console.log(`  ${cases.length} bad command lines answered, ${sample.length} of them as processes; slowest exit ${slowest.toFixed(0)} ms`);
});

test("--help of every subcommand lists every option with its default, exit 0 (two of them as processes)", async () => {
  const check = (spec: Command["spec"], r: { code: number | null; stdout: string; stderr: string }) => {
    assert.is(r.code, 0, `${spec.name} --help: ${r.stderr}`);
    assert.match(r.stdout, `Usage: tandem ${spec.name}`);
    for (const [name, option] of Object.entries(spec.options)) {
      assert.ok(r.stdout.includes(`--${name}`), `${spec.name} --help names --${name}`);
      if (option.shown !== undefined) assert.ok(r.stdout.includes(`(default: ${option.shown})`), `${spec.name} --help shows --${name}'s default ${option.shown}`);
    }
  };
  for (const command of ALL) check(command.spec, await runInProcess([...words(command), "--help"]));
  const sample = [ALL[0], ALL[ALL.length - 1]];
  const results = await inBatches(sample.map((c) => () => runTandem([...words(c), "--help"], LIMIT_MS)), PARALLEL);
  results.forEach((r, i) => check(sample[i].spec, r));
});

test("errors after parsing end the process too: a dead peer, a missing directory, an existing file", async () => {
  const home = mkdtempSync(join(tmpdir(), "tandem-bad-input-"));
  const image = join(home, "disk.raw");
  writeFileSync(image, new Uint8Array(65536));
  const dir = join(home, "no-such-dir");
  const guest = ["--guest", "reference", "--memory", "4"];
  const runs: [string[], number, string][] = [
    [["primary", "--connect", "127.0.0.1:1", ...guest], 1, "E_PEER_LOST"],
    [["migrate", "--connect", "127.0.0.1:1", "--run", "0", ...guest], 1, "E_PEER_LOST"],
    [["secondary", "--listen", `${dir}/s.sock`, ...guest], 2, `the directory ${dir} does not exist`],
    [["xenstored", "--socket", `${dir}/x.sock`], 2, `the directory ${dir} does not exist`],
    [["serve", "--socket", `${dir}/n.sock`, image], 2, `the directory ${dir} does not exist`],
    [["save", home, ...guest], 2, "is a directory"],
    [["save", image, ...guest], 2, "exists; give --force"],
    [["demo", "--kill-after", "5", "--duration", "2"], 2, "must be below --duration"],
  ];
  const results = await inBatches(runs.map(([args]) => () => runTandem(args, 30_000)), PARALLEL).finally(() => rmSync(home, { recursive: true, force: true }));
  results.forEach((r, i) => {
    const [args, code, says] = runs[i];
    const what = `tandem ${args.join(" ")}: ${r.stderr}`;
    assert.not.ok(r.timedOut, `still running: ${what}`);
    assert.is(r.code, code, what);
    assert.ok(r.stderr.includes(says), `says '${says}': ${what}`);
    assert.not.ok(hasStackTrace(r.stderr), `no stack trace: ${what}`);
  });
});

test.run();
