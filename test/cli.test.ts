import { suite } from "uvu";
import * as assert from "uvu/assert";
import { runCli } from "../host/cli/commands.ts";
import { selftest } from "../host/cli/selftest.ts";
import { VERSION } from "../host/wasm/embedded.generated.ts";

const test = suite("the tandem command");

function run(...args: string[]): { code: number; out: string; err: string } {
  const out: string[] = [];
  const err: string[] = [];
  const code = runCli(args, { out: (l) => out.push(l), err: (l) => err.push(l) });
  if (typeof code !== "number") throw new Error(`'${args.join(" ")}' is asynchronous; use runAsync`);
  return { code, out: out.join("\n"), err: err.join("\n") };
}

test("--version prints the package version", () => {
  const { code, out } = run("--version");
  assert.is(code, 0);
  assert.is(out, VERSION);
  assert.match(VERSION, /^\d+\.\d+\.\d+/);
});

test("--help lists the commands; no arguments is a usage error", () => {
  const help = run("--help");
  assert.is(help.code, 0);
  assert.match(help.out, "selftest");
  const none = run();
  assert.is(none.code, 2);
  assert.match(none.err, "Usage:");
});

test("unknown commands and options are usage errors that say what to do", () => {
  for (const args of [["frobnicate"], ["selftest", "--fast"]]) {
    const { code, err } = run(...args);
    assert.is(code, 2);
    assert.match(err, /Run 'tandem (selftest )?--help'/);
  }
});

test("selftest: every flavor loads and passes; SIMD is in use", () => {
  const report = selftest();
  assert.ok(report.ok);
  assert.equal(report.flavors.map((f) => [f.flavor, f.loaded, f.passed]), [
    ["simd", true, true],
    ["scalar", true, true],
    ["ts", true, true],
  ]);
  assert.is(report.selected, "simd");
  assert.ok(report.simdInUse);
  const { code, out } = run("selftest", "--json");
  assert.is(code, 0);
  assert.equal(JSON.parse(out).flavors.length, 3);
  assert.match(run("selftest").out, "selftest passed");
});

test.run();
