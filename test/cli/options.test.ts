import { suite } from "uvu";
import * as assert from "uvu/assert";
import { TandemError } from "../../host/errors.ts";
import { choice, custom, flag, helpText, list, number, parseOptions, rejectValue, required, text, type CommandSpec } from "../../host/cli/options.ts";

const test = suite("cli options: one table gives the parser and the help");

const spec = {
  name: "thing",
  operands: "FILE",
  minOperands: 1,
  maxOperands: 1,
  summary: "Does a thing.",
  options: {
    connect: required(text("ADDR", "where to connect")),
    interval: number("MS", "every MS milliseconds", { above: 0, max: 1000, default: 25, unit: "milliseconds" }),
    count: number("N", "how many", { integer: true, min: 1 }),
    mode: choice("M", "how", ["fast", "slow"], { default: "fast" }),
    tag: list("T", "a tag", { short: "t" }),
    even: custom("N", "an even number", (given) => (Number(given) % 2 === 0 ? Number(given) : rejectValue("expected an even number"))),
    quiet: flag("say less", { short: "q" }),
  },
} satisfies CommandSpec;

function parse(...args: string[]) {
  const parsed = parseOptions(spec, args);
  if (parsed === "help") throw new Error("help");
  return parsed;
}

function usageError(args: string[], message: string): void {
  try {
    parseOptions(spec, args);
  } catch (error) {
    assert.instance(error, TandemError);
    assert.is((error as TandemError).code, "E_BAD_ARGUMENT");
    assert.match((error as Error).message, message, args.join(" "));
    return;
  }
  assert.unreachable(`${args.join(" ")} was accepted`);
}

test("values in every spelling, defaults where absent, operands kept", () => {
  const a = parse("--connect", "h:1", "--interval=2.5", "-t", "x", "-ty", "-q", "--", "--not-an-option");
  assert.equal(a.operands, ["--not-an-option"]);
  assert.is(a.values.connect, "h:1");
  assert.is(a.values.interval, 2.5);
  assert.is(a.values.count, undefined);
  assert.is(a.values.mode, "fast");
  assert.equal(a.values.tag, ["x", "y"]);
  assert.is(a.values.quiet, true);
  const b = parse("f", "--connect", "c", "--count", "3", "--mode", "slow", "--even", "4");
  assert.equal([b.values.interval, b.values.count, b.values.mode, b.values.even, b.values.quiet, b.values.tag], [25, 3, "slow", 4, false, []]);
});

test("unknown options, missing and bad values, missing required options and operands are usage errors", () => {
  usageError(["f", "--connect", "c", "--frob"], "thing: unknown option '--frob'");
  usageError(["f", "--connect", "c", "-z"], "unknown option '-z'");
  usageError(["f", "--connect"], "--connect needs a value (ADDR)");
  usageError(["f", "--connect", "c", "--interval", "abc"], "--interval abc: expected a number of milliseconds, above 0 and at most 1000");
  usageError(["f", "--connect", "c", "--interval", "-5"], "--interval -5: expected");
  usageError(["f", "--connect", "c", "--interval", "0"], "--interval 0: expected");
  usageError(["f", "--connect", "c", "--interval", ""], "--interval : expected");
  usageError(["f", "--connect", "c", "--count", "1.5"], "--count 1.5: expected a whole number, at least 1");
  usageError(["f", "--connect", "c", "--mode", "medium"], "--mode medium: give fast or slow");
  usageError(["f", "--connect", "c", "--even", "3"], "--even 3: expected an even number");
  usageError(["f", "--connect", "c", "--quiet=yes"], "--quiet takes no value");
  usageError(["f"], "thing: needs --connect ADDR: where to connect");
  usageError(["--connect", "c"], "missing FILE");
  usageError(["f", "g", "--connect", "c"], "unexpected 'g'");
});

test("--help anywhere asks for help; the help lists every option with its default", () => {
  assert.is(parseOptions(spec, ["--interval", "abc", "--help"]), "help");
  assert.is(parseOptions(spec, ["-h"]), "help");
  const help = helpText(spec);
  assert.match(help, "Usage: tandem thing --connect ADDR [options] FILE");
  assert.match(help, /--interval MS +every MS milliseconds \(default: 25\)/);
  assert.match(help, /--connect ADDR +where to connect \(required\)/);
  assert.match(help, /--mode M +how \(default: fast\)/);
  assert.match(help, /-t, --tag T +a tag\n/);
  assert.match(help, /-q, --quiet +say less\n/);
  assert.match(help, /-h, --help +print this help/);
});

test.run();
