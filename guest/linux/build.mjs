// Builds tandem's Linux guest from Debian's own i386 packages, into guest/linux/build/:
//
//   node guest/linux/build.mjs            build what is missing or stale
//   node guest/linux/build.mjs --force    rebuild everything
//
// Outputs (nothing here is committed; guest/linux/README.md describes the guest):
//   vmlinuz            Debian's i386 kernel (the package linux-image-686:i386 depends on)
//   initrd.img         busybox-static and the disk drivers' modules, with init.sh as /init
//   data.img           a raw ext4 disk labelled tandem-data (e2fsprogs, mke2fs -d)
//   boot-disk.img      a FAT disk that SeaBIOS boots through syslinux (mtools; no loop mount)
//   boot.iso           an ISO 9660 CD-ROM that SeaBIOS boots through isolinux (xorriso)
//   manifest.json      versions and SHA-256 of each output; tandem keys boot snapshots by them
//
// Needs (Debian): dpkg, apt-get, e2fsprogs, cpio, gzip, mtools, syslinux,
// syslinux-common, isolinux, xorriso. Adds the i386 architecture to dpkg when it is missing
// (root or sudo). The same Debian package versions give the same kernel and modules.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL(".", import.meta.url));
const out = join(here, "build");
const work = join(out, "work");
const force = process.argv.includes("--force");

/** The kernel command line, for the bzImage boot and the BIOS-booted images alike. */
export const CMDLINE = "console=ttyS0 quiet loglevel=3 mitigations=off tsc=reliable";
/** The data disk's size and label (init.sh finds the disk by the label). */
const DATA_MIB = 32;
const DATA_LABEL = "tandem-data";
/** A fixed UUID and time, so that mke2fs writes the same image from the same inputs. */
const DATA_UUID = "7a6e6465-6d00-4c69-6e75-780000000001";
const FIXED_TIME = "1700000000";
/** The boot disk's size: the kernel and initrd plus room for syslinux. */
const BOOT_MIB = 32;

/**
 * The modules init.sh loads, by name; their dependencies are added in order. ext4 asks for the
 * crc32c algorithm at mount time by an alias that two modules offer: the generic one is named
 * here because it needs no SSE4.2.
 */
const MODULES = ["ata_piix", "sd_mod", "crc32c_generic", "ext4", "ne2k-pci"];

const root = typeof process.getuid === "function" && process.getuid() === 0;

function fail(message) {
  console.error(`guest/linux/build.mjs: ${message}`);
  process.exit(1);
}

function run(command, args, options = {}) {
  const r = spawnSync(command, args, { encoding: "utf8", maxBuffer: 64 << 20, ...options });
  if (r.error) {
    if (r.error.code === "ENOENT") fail(`${command} is not installed; on Debian: sudo apt-get install ${options.pkg ?? command}`);
    fail(`cannot run ${command}: ${r.error.message}`);
  }
  if (r.status !== 0) fail(`${command} ${args.join(" ")} failed (${r.status}):\n${r.stderr}`);
  return r.stdout;
}

function privileged(command, args) {
  return root ? run(command, args) : run("sudo", [command, ...args]);
}

function step(message) {
  console.log(`guest/linux: ${message}`);
}

function sha256(path) {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

/** Makes dpkg and apt know i386 packages. */
function ensureI386() {
  const foreign = run("dpkg", ["--print-foreign-architectures"]).split("\n");
  if (foreign.includes("i386")) return;
  step("adding the i386 architecture (dpkg --add-architecture i386; apt-get update)");
  privileged("dpkg", ["--add-architecture", "i386"]);
  privileged("apt-get", ["update"]);
}

/** The versioned kernel package linux-image-686:i386 depends on, e.g. linux-image-6.1.0-57-686. */
function kernelPackage() {
  const depends = run("apt-cache", ["depends", "linux-image-686:i386"]);
  const match = /Depends: (linux-image-[0-9][^\s:]*-686)(?::i386)?/.exec(depends);
  if (!match) fail(`apt-cache depends linux-image-686:i386 names no kernel package:\n${depends}`);
  return match[1];
}

function version(pkg) {
  const policy = run("apt-cache", ["show", "--no-all-versions", `${pkg}:i386`]);
  const match = /^Version: (.+)$/m.exec(policy);
  if (!match) fail(`apt-cache show ${pkg}:i386 gives no version`);
  return match[1];
}

/** Downloads and unpacks a package into work/<name>/, once per version. */
function unpack(pkg, ver) {
  const debs = join(work, "debs");
  mkdirSync(debs, { recursive: true });
  const already = readdirSync(debs).find((f) => f.startsWith(`${pkg}_`) && f.endsWith("_i386.deb"));
  let deb = already && already.includes(ver.replace(/^\d+:/, "")) ? join(debs, already) : undefined;
  if (!deb) {
    step(`apt-get download ${pkg}:i386 (${ver})`);
    run("apt-get", ["download", `${pkg}:i386=${ver}`], { cwd: debs });
    const name = readdirSync(debs).find((f) => f.startsWith(`${pkg}_`) && f.endsWith("_i386.deb") && f.includes(ver.replace(/^\d+:/, "")));
    if (!name) fail(`apt-get download left no ${pkg} package in ${debs}`);
    deb = join(debs, name);
  }
  const dir = join(work, pkg);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  run("dpkg-deb", ["-x", deb, dir]);
  return dir;
}

/** Every module file under the kernel's tree, by module name (dashes and underscores alike). */
function moduleFiles(modulesDir) {
  const byName = new Map();
  const walk = (dir) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (/\.ko(\.xz|\.zst)?$/.test(entry.name)) byName.set(entry.name.replace(/\.ko(\.xz|\.zst)?$/, "").replaceAll("-", "_"), path);
    }
  };
  walk(modulesDir);
  return byName;
}

/**
 * A module's .modinfo section (key=value strings, NUL-separated), read from its ELF32 file as
 * modinfo(8) does; the ELF header and section header layouts are the System V gABI's.
 */
function modinfo(file) {
  const elf = readFileSync(file);
  if (elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 1 || elf[5] !== 1) fail(`${file} is not a little-endian ELF32 module`);
  const sectionTable = elf.readUInt32LE(0x20); // e_shoff
  const entrySize = elf.readUInt16LE(0x2e); // e_shentsize
  const count = elf.readUInt16LE(0x30); // e_shnum
  const namesIndex = elf.readUInt16LE(0x32); // e_shstrndx
  const section = (i) => {
    const at = sectionTable + i * entrySize;
    return { name: elf.readUInt32LE(at), offset: elf.readUInt32LE(at + 0x10), size: elf.readUInt32LE(at + 0x14) };
  };
  const names = section(namesIndex);
  const info = new Map();
  for (let i = 0; i < count; i++) {
    const s = section(i);
    const nameEnd = elf.indexOf(0, names.offset + s.name);
    if (elf.toString("latin1", names.offset + s.name, nameEnd) !== ".modinfo") continue;
    for (const entry of elf.toString("latin1", s.offset, s.offset + s.size).split("\0")) {
      const eq = entry.indexOf("=");
      if (eq > 0 && !info.has(entry.slice(0, eq))) info.set(entry.slice(0, eq), entry.slice(eq + 1));
    }
  }
  return info;
}

/** The modules to load, dependencies first (each module's .modinfo lists its own). */
function moduleOrder(modulesDir) {
  const files = moduleFiles(modulesDir);
  const order = [];
  const seen = new Set();
  const visit = (name, path) => {
    const key = name.replaceAll("-", "_");
    if (seen.has(key)) return;
    seen.add(key);
    const file = files.get(key);
    if (!file) fail(`module ${name} is not in the kernel package (needed by ${path.join(" <- ")})`);
    const info = modinfo(file);
    for (const dep of (info.get("depends") ?? "").split(",").filter(Boolean)) visit(dep, [name, ...path]);
    // A soft dependency is asked for by name at load time, not by symbol (ext4 asks for crc32c).
    for (const pre of /pre:\s*(.*)$/.exec(info.get("softdep") ?? "")?.[1]?.trim().split(/\s+/).filter(Boolean) ?? []) {
      if (files.has(pre.replaceAll("-", "_"))) visit(pre, [name, ...path]);
    }
    order.push({ name: key, file });
  };
  for (const name of MODULES) visit(name, []);
  return order;
}

/** Copies a module, uncompressed (busybox's insmod takes plain .ko files). */
function copyModule(file, target) {
  if (file.endsWith(".ko")) copyFileSync(file, target);
  else if (file.endsWith(".xz")) writeFileSync(target, run("xz", ["-dc", file], { encoding: "buffer" }));
  else writeFileSync(target, run("zstd", ["-dc", file], { encoding: "buffer" }));
}

function buildInitrd(kernelDir, busyboxDir, kernelRelease) {
  const tree = join(work, "initramfs");
  rmSync(tree, { recursive: true, force: true });
  for (const dir of ["bin", "dev", "proc", "sys", "mnt", "lib/modules"]) mkdirSync(join(tree, dir), { recursive: true });
  copyFileSync(join(busyboxDir, "bin", "busybox"), join(tree, "bin", "busybox"));
  chmodSync(join(tree, "bin", "busybox"), 0o755);
  copyFileSync(join(here, "init.sh"), join(tree, "init"));
  chmodSync(join(tree, "init"), 0o755);
  const order = moduleOrder(join(kernelDir, "lib", "modules", kernelRelease));
  for (const { name, file } of order) copyModule(file, join(tree, "lib", "modules", `${name}.ko`));
  writeFileSync(join(tree, "lib", "modules", "order"), order.map(({ name }) => `${name}.ko\n`).join(""));
  step(`initramfs modules: ${order.map(({ name }) => name).join(" ")}`);
  const list = run("find", [".", "-print0"], { cwd: tree }).split("\0").filter(Boolean).sort().join("\0") + "\0";
  // Fixed owners and times, and a sorted list, so that the same inputs give the same archive.
  run("find", [".", "-exec", "touch", "-h", "-d", `@${FIXED_TIME}`, "{}", "+"], { cwd: tree });
  const cpio = spawnSync("cpio", ["--null", "--create", "--format=newc", "--owner=0:0", "--reproducible", "--quiet"], { cwd: tree, input: list, maxBuffer: 256 << 20 });
  if (cpio.status !== 0) fail(`cpio failed: ${cpio.stderr}`);
  const gz = spawnSync("gzip", ["-9", "-n"], { input: cpio.stdout, maxBuffer: 256 << 20 });
  if (gz.status !== 0) fail(`gzip failed: ${gz.stderr}`);
  writeFileSync(join(out, "initrd.img"), gz.stdout);
}

function buildDataDisk() {
  const tree = join(work, "data");
  rmSync(tree, { recursive: true, force: true });
  mkdirSync(join(tree, "data"), { recursive: true });
  writeFileSync(join(tree, "README"), "tandem's Linux guest writes /data/fN here; see guest/linux/README.md\n");
  run("find", [".", "-exec", "touch", "-h", "-d", `@${FIXED_TIME}`, "{}", "+"], { cwd: tree });
  const image = join(out, "data.img");
  rmSync(image, { force: true });
  run("mke2fs", ["-q", "-F", "-t", "ext4", "-L", DATA_LABEL, "-U", DATA_UUID, "-E", `root_owner=0:0,hash_seed=${DATA_UUID}`, "-d", tree, image, `${DATA_MIB}M`],
    { env: { ...process.env, E2FSPROGS_FAKE_TIME: FIXED_TIME }, pkg: "e2fsprogs" });
}

function syslinuxConfig(prefix) {
  return `DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL ${prefix}vmlinuz\n  INITRD ${prefix}initrd.img\n  APPEND ${CMDLINE}\n`;
}

function buildBootDisk() {
  const image = join(out, "boot-disk.img");
  rmSync(image, { force: true });
  writeFileSync(image, new Uint8Array(0));
  // A whole-disk FAT (no partition table): SeaBIOS runs its boot sector, which is syslinux's.
  run("mformat", ["-i", image, "-C", "-T", String(BOOT_MIB * 2048), "-h", "64", "-s", "32", "-N", "74616e64", "::"], { pkg: "mtools" });
  run("syslinux", ["--install", image]);
  const config = join(work, "syslinux.cfg");
  writeFileSync(config, syslinuxConfig(""));
  for (const file of [join(out, "vmlinuz"), join(out, "initrd.img"), config]) run("mcopy", ["-i", image, "-o", file, "::"], { pkg: "mtools" });
}

function buildIso() {
  const tree = join(work, "iso");
  rmSync(tree, { recursive: true, force: true });
  mkdirSync(join(tree, "isolinux"), { recursive: true });
  copyFileSync("/usr/lib/ISOLINUX/isolinux.bin", join(tree, "isolinux", "isolinux.bin"));
  copyFileSync("/usr/lib/syslinux/modules/bios/ldlinux.c32", join(tree, "isolinux", "ldlinux.c32"));
  writeFileSync(join(tree, "isolinux", "isolinux.cfg"), syslinuxConfig("/"));
  copyFileSync(join(out, "vmlinuz"), join(tree, "vmlinuz"));
  copyFileSync(join(out, "initrd.img"), join(tree, "initrd.img"));
  const iso = join(out, "boot.iso");
  rmSync(iso, { force: true });
  run("xorriso", ["-as", "mkisofs", "-quiet", "-o", iso, "-V", "TANDEM_LINUX", "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
    "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table", tree], { env: { ...process.env, SOURCE_DATE_EPOCH: FIXED_TIME } });
}

for (const file of ["/usr/lib/ISOLINUX/isolinux.bin", "/usr/lib/syslinux/modules/bios/ldlinux.c32"]) {
  if (!existsSync(file)) fail(`${file} is missing; on Debian: sudo apt-get install isolinux syslinux-common`);
}
ensureI386();
const kernel = kernelPackage();
const kernelVersion = version(kernel);
const busyboxVersion = version("busybox-static");
const script = createHash("sha256").update(readFileSync(fileURLToPath(import.meta.url))).update(readFileSync(join(here, "init.sh"))).digest("hex");
const manifestPath = join(out, "manifest.json");
const previous = existsSync(manifestPath) ? JSON.parse(readFileSync(manifestPath, "utf8")) : undefined;
const outputs = ["vmlinuz", "initrd.img", "data.img", "boot-disk.img", "boot.iso"];
if (!force && previous && previous.kernel === `${kernel} ${kernelVersion}` && previous.busybox === busyboxVersion && previous.script === script &&
  outputs.every((name) => existsSync(join(out, name)))) {
  step(`up to date in ${out} (--force rebuilds)`);
  process.exit(0);
}

mkdirSync(out, { recursive: true });
const kernelDir = unpack(kernel, kernelVersion);
const busyboxDir = unpack("busybox-static", busyboxVersion);
const bootDir = join(kernelDir, "boot");
const vmlinuz = readdirSync(bootDir).find((f) => f.startsWith("vmlinuz-"));
if (!vmlinuz) fail(`${kernel} has no /boot/vmlinuz-*`);
const kernelRelease = vmlinuz.slice("vmlinuz-".length);
copyFileSync(join(bootDir, vmlinuz), join(out, "vmlinuz"));
step(`kernel ${kernelRelease} (${kernel} ${kernelVersion}), busybox-static ${busyboxVersion}`);
buildInitrd(kernelDir, busyboxDir, kernelRelease);
buildDataDisk();
buildBootDisk();
buildIso();
const manifest = {
  kernel: `${kernel} ${kernelVersion}`,
  kernelRelease,
  busybox: busyboxVersion,
  cmdline: CMDLINE,
  script,
  files: Object.fromEntries(outputs.map((name) => [name, { bytes: statSync(join(out, name)).size, sha256: sha256(join(out, name)) }])),
};
writeFileSync(manifestPath, JSON.stringify(manifest, null, 2) + "\n");
rmSync(join(work, "initramfs"), { recursive: true, force: true });
rmSync(join(work, "iso"), { recursive: true, force: true });
step(`built ${outputs.join(", ")} in ${out}`);
