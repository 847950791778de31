import { suite } from "uvu";
import * as assert from "uvu/assert";
import { startLocalEtcd, type LocalEtcd } from "../../host/witness/local-etcd.ts";
import { Witness } from "../../host/witness/witness.ts";
import { etcdTest, uniqueGuest } from "../support/etcd.ts";

const test = suite("witness: a three-member etcd cluster");
let etcd: LocalEtcd | undefined;

test.before(async () => {
  if (etcdTest("witness cluster")) etcd = await startLocalEtcd({ members: 3 });
});
test.after(async () => {
  await etcd?.stop();
});

test("an owner keeps its lease through the loss of any one member; with two lost, nobody can win", async () => {
  if (!etcd) return;
  const guest = uniqueGuest("cluster");
  // TTL 3 s: a leader election on this loaded 2-core machine can take over a second, and the
  // owner must ride it out (with 2 s it fences, which is safe but not what is tested here).
  const a = new Witness({ endpoints: etcd.endpoints, guest, side: "a", ttlMs: 3000 });
  const b = new Witness({ endpoints: etcd.endpoints, guest, side: "b", ttlMs: 3000 });
  const owner = await a.claimFresh();
  let lost = "";
  owner.onLost((reason) => (lost = reason));
  for (const member of [0, 1, 2]) {
    await etcd.kill(member);
    await new Promise((r) => setTimeout(r, 3500)); // longer than the TTL: renewals must have gone through
    assert.ok(owner.valid(), `still owner with member ${member} down (${lost})`);
    await etcd.restart(member);
  }
  assert.is(await b.takeOver(1), undefined, "a live owner is never displaced");
  await etcd.kill(1);
  await etcd.kill(2);
  // A leader cut off from its majority may renew for one more election timeout before it steps down.
  await new Promise((r) => setTimeout(r, 4000));
  assert.not.ok(owner.valid(), "without a majority the owner cannot renew, and fences");
  assert.match(lost, /renewed in time|expired/);
  assert.is(await b.takeOver(1), undefined, "and nobody can win either");
  await etcd.restart(1);
  await etcd.restart(2);
});

test.run();
