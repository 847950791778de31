import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode, TandemError } from "../../host/errors.ts";
import { startLocalEtcd, type LocalEtcd } from "../../host/witness/local-etcd.ts";
import { Witness } from "../../host/witness/witness.ts";
import { etcdTest, uniqueGuest } from "../support/etcd.ts";
import { startTcpProxy } from "../../host/cli/partition-proxy.ts";

const test = suite("witness: one owner per guest, in a real etcd");
const TTL = 2000;
let etcd: LocalEtcd | undefined;

test.before(async () => {
  if (etcdTest("witness")) etcd = await startLocalEtcd();
});
test.after(async () => {
  await etcd?.stop();
});

const sides = (guest: string, endpoints: string[], endpointsB = endpoints) => ({
  a: new Witness({ endpoints, guest, side: "a", address: "127.0.0.1:1", ttlMs: TTL }),
  b: new Witness({ endpoints: endpointsB, guest, side: "b", address: "127.0.0.1:2", ttlMs: TTL }),
});

test("a fresh claim wins generation 1; a second claim is refused; the owner key names the side", async () => {
  if (!etcd) return;
  const { a, b } = sides(uniqueGuest("claim"), etcd.endpoints);
  const owner = await a.claimFresh();
  assert.is(owner.generation, 1);
  assert.ok(owner.valid());
  assert.equal(await b.owner(), { side: "a", generation: 1, address: "127.0.0.1:1" });
  try {
    await b.claimFresh();
    assert.unreachable("a second fresh claim");
  } catch (error) {
    assert.is((error as TandemError).code, ErrorCode.Witness);
    assert.match((error as Error).message, /owned by side 'a'/);
  }
  await owner.release();
  assert.not.ok(owner.valid());
  try {
    await a.claimFresh();
    assert.unreachable("a fresh claim of a guest with a history");
  } catch (error) {
    assert.match((error as Error).message, /history at generation 1/);
  }
});

test("a standby cannot win while the owner renews; it wins once the owner's lease expired, with generation + 1", async () => {
  if (!etcd) return;
  const { a, b } = sides(uniqueGuest("takeover"), etcd.endpoints);
  const owner = await a.claimFresh();
  const started = performance.now();
  assert.is(await b.takeOver(1), undefined, "the owner is alive");
  assert.ok(performance.now() - started >= TTL, "it tried for at least the TTL");
  assert.ok(owner.valid(), "the owner kept its lease all along");
  owner.close(); // the owner dies: no more renewals
  const diedAt = performance.now();
  const won = await b.takeOver(1);
  const tookMs = performance.now() - diedAt;
  assert.ok(won, "won after the lease expired");
  assert.is(won!.generation, 2);
  assert.ok(tookMs <= TTL + 700, `won ${tookMs.toFixed(0)} ms after the owner stopped renewing (TTL ${TTL}, etcd expires leases on a 500 ms tick)`);
  assert.not.ok(owner.valid(), "the old owner's lease is over locally before anyone could win it");
  assert.equal(await a.owner(), { side: "b", generation: 2, address: "127.0.0.1:2" });
  await won!.release();
});

test("an owner that advances the generation shuts out a standby of the older one, even after dying", async () => {
  if (!etcd) return;
  const { a, b } = sides(uniqueGuest("advance"), etcd.endpoints);
  const owner = await a.claimFresh();
  assert.ok(await owner.advance());
  assert.is(owner.generation, 2);
  owner.close();
  assert.is(await b.takeOver(1, TTL + 1500), undefined, "generation 1 is history");
  const won = await b.takeOver(2);
  assert.ok(won);
  assert.is(won!.generation, 3);
  assert.not.ok(await owner.advance(), "the old owner cannot advance any more");
  await won!.release();
});

test("an owner cut from etcd loses its lease locally before etcd expires it, and the standby then wins", async () => {
  if (!etcd) return;
  const proxy = await startTcpProxy(etcd.members[0].clientPort);
  try {
    const { a, b } = sides(uniqueGuest("cut"), [proxy.url], etcd.endpoints);
    const owner = await a.claimFresh();
    let lostAt = 0;
    owner.onLost(() => (lostAt = performance.now()));
    await new Promise((r) => setTimeout(r, 700)); // a renewal or two
    proxy.cut();
    const cutAt = performance.now();
    const won = await b.takeOver(1);
    const wonAt = performance.now();
    assert.ok(won, "the standby won");
    assert.ok(lostAt > 0, "the owner noticed");
    assert.ok(lostAt < wonAt, `the owner stopped ${(wonAt - lostAt).toFixed(0)} ms before the standby won`);
    assert.ok(lostAt - cutAt <= TTL, `lost within the TTL of the cut (${(lostAt - cutAt).toFixed(0)} ms)`);
    assert.not.ok(owner.valid());
    await won!.release();
  } finally {
    await proxy.close();
  }
});

test("a standby cut from etcd never takes over; etcd down: no takeover, and the owner loses its lease", async () => {
  if (!etcd) return;
  const proxy = await startTcpProxy(etcd.members[0].clientPort);
  try {
    const { a, b } = sides(uniqueGuest("nocut"), etcd.endpoints, [proxy.url]);
    const owner = await a.claimFresh();
    owner.close(); // the owner dies and its lease expires...
    proxy.cut(); // ...but the standby cannot reach etcd
    assert.is(await b.takeOver(1), undefined);
    assert.equal((await a.owner()), undefined, "the key is free: only the standby's cut kept it from winning");
  } finally {
    await proxy.close();
  }
});

test.run();
