import { suite } from "uvu";
import * as assert from "uvu/assert";
import { parseNetSpec } from "../../host/cli/net-option.ts";
import { ErrorCode, TandemError } from "../../host/errors.ts";

const test = suite("--net SPEC: passt[:OPTIONS] or socket:PATH");

test("passt, with its options, and socket:PATH", () => {
  assert.equal(parseNetSpec("passt"), { kind: "passt", passt: { tcpForwards: [], outliveCaller: true } });
  assert.equal(parseNetSpec("passt:tcp=8080:80,tcp=127.0.0.1/8081:81,udp=5353:53,mtu=1400,socket=/tmp/n.sock"), {
    kind: "passt",
    passt: { tcpForwards: ["8080:80", "127.0.0.1/8081:81"], mtu: 1400, socketPath: "/tmp/n.sock", extraArgs: ["-u", "5353:53"], outliveCaller: true },
  });
  assert.equal(parseNetSpec("socket:/run/passt.socket"), { kind: "socket", path: "/run/passt.socket" });
});

test("anything else is E_BAD_ARGUMENT saying what is expected", () => {
  for (const bad of ["", "slirp", "socket:", "passt:", "passt:tcp", "passt:tcp=", "passt:mtu=10", "passt:mtu=abc", "passt:port=80", "passtx"]) {
    try {
      parseNetSpec(bad);
      assert.unreachable(`took ${JSON.stringify(bad)}`);
    } catch (error) {
      assert.instance(error, TandemError, String(error));
      assert.is((error as TandemError).code, ErrorCode.BadArgument);
      assert.match((error as TandemError).message, /expected|needs/);
    }
  }
});

test.run();
