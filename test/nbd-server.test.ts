import { readFileSync, writeFileSync } from "node:fs";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import type { Disk } from "../host/disk/disk.ts";
import { createImage, openDisk } from "../host/disk/registry.ts";
import { NbdServer, type NbdAddress } from "../host/nbd/server.ts";
import {
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_ENOTSUP,
  NBD_EPERM,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_OPT_GO,
  NBD_REP_ACK,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
} from "../host/nbd/protocol.ts";
import { concat } from "./support/bytes.ts";
import { handshake, mustRun, nbdTest, option, optionReply, RawClient, request, runTool, simpleReply, u32 } from "./support/nbd.ts";
import { qemuCheck, qemuIo, tempDir } from "./support/qemu.ts";

const test = suite("NBD server: qemu-img, qemu-io and nbdinfo against tandem's server; hostile raw clients");

const MiB = 1024 * 1024;
const EXPORT = "disk0";

/** Serves `disk` in this process for the length of `body`, then closes server and disk. */
async function serving(disk: Disk, where: NbdAddress, body: (server: NbdServer) => Promise<void>): Promise<void> {
  const server = await NbdServer.listen({ disk, exportName: EXPORT }, where);
  try {
    await body(server);
  } finally {
    await server.close();
    disk.close();
  }
}

test("a --socket path that is a regular file is refused, and the file is left alone", async () => {
  const tmp = tempDir("nbd-path");
  try {
    const path = tmp.path("not-a-socket");
    writeFileSync(path, "precious");
    createImage(tmp.path("disk.raw"), "raw", { size: MiB });
    const disk = openDisk(tmp.path("disk.raw"));
    try {
      let code: string | undefined;
      try {
        await NbdServer.listen({ disk }, { path });
      } catch (error) {
        code = (error as { code?: string }).code;
      }
      assert.is(code, "E_BAD_ARGUMENT");
      assert.is(readFileSync(path, "utf8"), "precious");
    } finally {
      disk.close();
    }
  } finally {
    tmp.remove();
  }
});

test("qemu-img info, qemu-io write -P / read -P over nbd:// on a raw image; the file holds the writes", async () => {
  if (!nbdTest("raw over TCP")) return;
  const t = tempDir("nbd-raw");
  try {
    createImage(t.path("a.raw"), "raw", { size: 8 * MiB });
    await serving(openDisk(t.path("a.raw")), { port: 0 }, async (server) => {
      assert.match(server.uri, /^nbd:\/\/127\.0\.0\.1:\d+\/disk0$/);
      const info = JSON.parse(await mustRun("qemu-img", ["info", "--output=json", server.uri])) as { "virtual-size": number };
      assert.is(info["virtual-size"], 8 * MiB);
      await mustRun("qemu-io", ["-f", "raw", "-c", "write -P 0xa5 12288 1M", "-c", "write -P 0x3c 7M 65536", "-c", "read -P 0xa5 12288 1M", "-c", "read -P 0x3c 7M 65536", "-c", "read -P 0 0 12288", server.uri]);
    });
    qemuIo(t.path("a.raw"), ["read -P 0xa5 12288 1M", "read -P 0x3c 7M 65536", "read -P 0 0 12288"], { format: "raw" });
  } finally {
    t.remove();
  }
});

test("a qcow2 overlay with a backing file over nbd+unix://: reads fall through, qemu-img convert/compare agree, qemu-img check passes", async () => {
  if (!nbdTest("qcow2 over unix socket")) return;
  const t = tempDir("nbd-qcow2");
  try {
    createImage(t.path("base.raw"), "raw", { size: 16 * MiB });
    qemuIo(t.path("base.raw"), ["write -P 0x11 0 16M"], { format: "raw" });
    createImage(t.path("top.qcow2"), "qcow2", { size: 16 * MiB, backingFile: "base.raw", backingFormat: "raw" });
    await serving(openDisk(t.path("top.qcow2")), { path: t.path("nbd.sock") }, async (server) => {
      assert.is(server.uri, `nbd+unix:///disk0?socket=${t.path("nbd.sock")}`);
      await mustRun("qemu-io", ["-f", "raw", "-c", "read -P 0x11 0 16M", "-c", "write -P 0x22 1M 3M", "-c", "write -z 8M 1M", "-c", "discard 12M 1M", server.uri]);
      await mustRun("qemu-img", ["convert", "-f", "raw", "-O", "raw", server.uri, t.path("copy.raw")]);
      const compare = await runTool("qemu-img", ["compare", "-f", "raw", "-F", "raw", server.uri, t.path("copy.raw")]);
      assert.is(compare.status, 0, compare.stdout + compare.stderr);
    });
    qemuIo(t.path("copy.raw"), ["read -P 0x11 0 1M", "read -P 0x22 1M 3M", "read -P 0x11 4M 4M", "read -P 0 8M 1M", "read -P 0 12M 1M", "read -P 0x11 13M 3M"], { format: "raw" });
    const compare = await runTool("qemu-img", ["compare", t.path("top.qcow2"), t.path("copy.raw")]);
    assert.is(compare.status, 0, compare.stdout + compare.stderr);
    assert.is(qemuCheck(t.path("top.qcow2")).status, 0);
  } finally {
    t.remove();
  }
});

test("nbdinfo --map shows base:allocation as the disk's map says; nbdinfo --list lists the export", async () => {
  if (!nbdTest("block status")) return;
  const t = tempDir("nbd-map");
  try {
    createImage(t.path("m.qcow2"), "qcow2", { size: 32 * MiB });
    const disk = openDisk(t.path("m.qcow2"));
    disk.write(0, new Uint8Array(128 * 1024).fill(7));
    disk.write(5 * MiB, new Uint8Array(4096).fill(9));
    disk.writeZeroes(10 * MiB, 2 * MiB);
    disk.write(20 * MiB, new Uint8Array(MiB).fill(1));
    const expected: { offset: number; length: number; type: number }[] = [];
    for (const e of disk.map(0, disk.size)) {
      const type = (e.data ? 0 : NBD_STATE_HOLE) | (e.zero ? NBD_STATE_ZERO : 0);
      const last = expected[expected.length - 1];
      if (last !== undefined && last.type === type) last.length += e.length;
      else expected.push({ offset: e.offset, length: e.length, type });
    }
    assert.ok(expected.length >= 5, "the map has data, holes and zeros to show");
    await serving(disk, { port: 0 }, async (server) => {
      const map = JSON.parse(await mustRun("nbdinfo", ["--map", "--json", server.uri])) as { offset: number; length: number; type: number }[];
      assert.equal(map.map((e) => ({ offset: e.offset, length: e.length, type: e.type })), expected);
      const list = await mustRun("nbdinfo", ["--list", "--json", server.uri.replace(/\/disk0$/, "")]);
      const exports = (JSON.parse(list) as { exports: { "export-name": string; "export-size": number }[] }).exports;
      assert.equal(exports.map((e) => [e["export-name"], e["export-size"]]), [[EXPORT, 32 * MiB]]);
    });
  } finally {
    t.remove();
  }
});

test("a read-only export: qemu-io reads but its writes fail; a raw WRITE gets EPERM; the image is unchanged", async () => {
  if (!nbdTest("read-only")) return;
  const t = tempDir("nbd-ro");
  try {
    createImage(t.path("r.qcow2"), "qcow2", { size: 4 * MiB });
    qemuIo(t.path("r.qcow2"), ["write -P 0x44 0 1M"], { format: "qcow2" });
    await serving(openDisk(t.path("r.qcow2"), { readOnly: true }), { port: 0 }, async (server) => {
      const info = JSON.parse(await mustRun("nbdinfo", ["--json", server.uri])) as { exports: { is_read_only: boolean }[] };
      assert.is(info.exports[0].is_read_only, true);
      await mustRun("qemu-io", ["-f", "raw", "-r", "-c", "read -P 0x44 0 1M", server.uri]);
      const write = await runTool("qemu-io", ["-f", "raw", "-c", "write -P 0x55 0 4096", server.uri]);
      assert.ok(write.status !== 0 || /error|failed|denied|read-only/i.test(write.stdout + write.stderr), write.stdout + write.stderr);
      const client = await RawClient.connect(server.address as { port: number });
      try {
        assert.ok((await handshake(client, EXPORT)) & NBD_FLAG_READ_ONLY);
        client.write(concat([request(NBD_CMD_WRITE, 1, 0, 4096), new Uint8Array(4096).fill(0x66)]));
        assert.is((await simpleReply(client)).error, NBD_EPERM);
        client.write(request(NBD_CMD_READ, 2, 0, 4096));
        const read = await simpleReply(client, 4096);
        assert.equal([read.error, read.cookie, read.data[0], read.data[4095]], [0, 2, 0x44, 0x44]);
      } finally {
        client.destroy();
      }
    });
    qemuIo(t.path("r.qcow2"), ["read -P 0x44 0 1M"], { format: "qcow2" });
  } finally {
    t.remove();
  }
});

test("hostile clients: bad magic, unknown option and export, 4 GiB WRITE, past the end, unknown command, disconnect mid-payload; others keep working", async () => {
  if (!nbdTest("hostile")) return;
  const t = tempDir("nbd-hostile");
  try {
    createImage(t.path("h.qcow2"), "qcow2", { size: 4 * MiB });
    qemuIo(t.path("h.qcow2"), ["write -P 0x77 0 4M"], { format: "qcow2" });
    await serving(openDisk(t.path("h.qcow2")), { port: 0 }, async (server) => {
      const where = server.address as { port: number };
      // Garbage instead of an option: the server hangs up.
      const garbage = await RawClient.connect(where);
      await garbage.read(18);
      garbage.write(u32(NBD_FLAG_C_FIXED_NEWSTYLE));
      garbage.write(new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
      await garbage.closed;

      // An unknown option gets NBD_REP_ERR_UNSUP, an unknown export NBD_REP_ERR_UNKNOWN; the session goes on.
      const client = await RawClient.connect(where);
      await client.read(18);
      client.write(u32(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES));
      client.write(option(0x7777, new Uint8Array(10)));
      assert.equal(await optionReply(client).then((r) => [r.option, r.type]), [0x7777, NBD_REP_ERR_UNSUP]);
      const bad = new TextEncoder().encode("nope");
      client.write(option(NBD_OPT_GO, concat([u32(bad.length), bad, new Uint8Array(2)])));
      assert.is((await optionReply(client)).type, NBD_REP_ERR_UNKNOWN);
      const name = new TextEncoder().encode(EXPORT);
      client.write(option(NBD_OPT_GO, concat([u32(name.length), name, new Uint8Array(2)])));
      for (let reply = await optionReply(client); reply.type !== NBD_REP_ACK; reply = await optionReply(client)) assert.is(reply.type, NBD_REP_INFO);

      // A WRITE claiming 4 GiB - 1 is refused at once; its payload would be skipped.
      client.write(request(NBD_CMD_WRITE, 10, 0, 0xffffffff));
      assert.equal(await simpleReply(client).then((r) => [r.error, r.cookie]), [NBD_EINVAL, 10]);
      client.destroy();

      const client2 = await RawClient.connect(where);
      await handshake(client2, EXPORT);
      client2.write(request(NBD_CMD_READ, 11, 4 * MiB - 512, 4096));
      client2.write(concat([request(NBD_CMD_WRITE, 12, 4 * MiB, 16), new Uint8Array(16)]));
      client2.write(request(NBD_CMD_READ, 13, 2 ** 62, 1));
      client2.write(request(0x33, 14, 0, 0));
      client2.write(request(NBD_CMD_READ, 15, 0, 64 * MiB));
      for (const cookie of [11, 12, 13]) assert.equal(await simpleReply(client2).then((r) => [r.cookie, r.error]), [cookie, NBD_EINVAL]);
      assert.equal(await simpleReply(client2).then((r) => [r.cookie, r.error]), [14, NBD_ENOTSUP]);
      assert.equal(await simpleReply(client2).then((r) => [r.cookie, r.error]), [15, NBD_EINVAL]);
      // Still in step after all that: a good read.
      client2.write(request(NBD_CMD_READ, 16, 0, 8));
      assert.equal(await simpleReply(client2, 8).then((r) => [r.cookie, r.error, [...r.data]]), [16, 0, new Array(8).fill(0x77)]);

      // Half a write's payload, then gone: nothing of it reaches the disk.
      const quitter = await RawClient.connect(where);
      await handshake(quitter, EXPORT);
      quitter.write(concat([request(NBD_CMD_WRITE, 20, MiB, 65536), new Uint8Array(30000).fill(0xee)]));
      await new Promise((resolve) => setTimeout(resolve, 100));
      quitter.destroy();

      await mustRun("qemu-io", ["-f", "raw", "-c", "read -P 0x77 0 4M", "-c", "write -P 0x78 3M 4096", server.uri]);
      client2.write(request(NBD_CMD_READ, 17, 3 * MiB, 4));
      assert.equal(await simpleReply(client2, 4).then((r) => [r.cookie, [...r.data]]), [17, [0x78, 0x78, 0x78, 0x78]]);
      client2.destroy();
    });
    qemuIo(t.path("h.qcow2"), ["read -P 0x77 0 3M", "read -P 0x78 3M 4096"], { format: "qcow2" });
    assert.is(qemuCheck(t.path("h.qcow2")).status, 0);
  } finally {
    t.remove();
  }
});

test("pipelined requests are all answered with their cookies; FUA flushes before the reply; NO_HOLE zeroing stays allocated", async () => {
  if (!nbdTest("pipeline")) return;
  const t = tempDir("nbd-pipe");
  try {
    createImage(t.path("p.qcow2"), "qcow2", { size: 8 * MiB });
    const disk = openDisk(t.path("p.qcow2"));
    let flushes = 0;
    const flush = disk.flush.bind(disk);
    disk.flush = () => {
      flushes++;
      flush();
    };
    await serving(disk, { port: 0 }, async (server) => {
      const client = await RawClient.connect(server.address as { port: number });
      await handshake(client, EXPORT);
      const burst: Uint8Array[] = [];
      for (let i = 0; i < 32; i++) burst.push(request(NBD_CMD_WRITE, 100 + i, i * 65536, 4096), new Uint8Array(4096).fill(i + 1));
      for (let i = 0; i < 32; i++) burst.push(request(NBD_CMD_READ, 200 + i, i * 65536, 4096));
      client.write(concat(burst));
      for (let i = 0; i < 32; i++) assert.equal(await simpleReply(client).then((r) => [r.cookie, r.error]), [100 + i, 0]);
      for (let i = 0; i < 32; i++) {
        const read = await simpleReply(client, 4096);
        assert.equal([read.cookie, read.data[0], read.data[4095]], [200 + i, i + 1, i + 1]);
      }
      assert.is(flushes, 0, "no flush without FUA");
      client.write(concat([request(NBD_CMD_WRITE, 300, 0, 512, NBD_CMD_FLAG_FUA), new Uint8Array(512)]));
      assert.is((await simpleReply(client)).error, 0);
      assert.is(flushes, 1, "FUA flushed before the reply");
      client.write(request(NBD_CMD_WRITE_ZEROES, 301, 4 * MiB, MiB, NBD_CMD_FLAG_NO_HOLE));
      client.write(request(NBD_CMD_WRITE_ZEROES, 302, 6 * MiB, MiB));
      assert.equal([(await simpleReply(client)).error, (await simpleReply(client)).error], [0, 0]);
      const [allocated] = disk.map(4 * MiB, MiB);
      assert.equal([allocated.data, allocated.length], [true, MiB], "NO_HOLE wrote zeros as data");
      assert.is(disk.map(6 * MiB, MiB)[0].data, false, "plain WRITE_ZEROES left no data");
      assert.ok(disk.read(4 * MiB, MiB).every((b) => b === 0));
      client.destroy();
    });
  } finally {
    t.remove();
  }
});

test.run();
