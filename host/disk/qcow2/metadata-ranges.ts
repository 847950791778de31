/**
 * Where a qcow2 image's fixed metadata lies: the header cluster, the L1 table and the refcount
 * table. A cluster that overlaps them is never a valid data cluster, L2 table or refcount block;
 * checking this (QEMU's overlap check, cow-disks.md 3.2) stops a corrupt or hostile image from
 * turning a write into damage to its own tables.
 */

/** The fixed metadata ranges of one image. */
export class MetadataRanges {
  readonly #clusterSize: number;
  readonly #l1Offset: number;
  readonly #l1Bytes: number;
  #refcountTableOffset: number;
  #refcountTableBytes: number;

  constructor(clusterSize: number, l1: { offset: number; bytes: number }, refcountTable: { offset: number; bytes: number }) {
    this.#clusterSize = clusterSize;
    this.#l1Offset = l1.offset;
    this.#l1Bytes = l1.bytes;
    this.#refcountTableOffset = refcountTable.offset;
    this.#refcountTableBytes = refcountTable.bytes;
  }

  /** Records that the refcount table moved (it grew). */
  moveRefcountTable(offset: number, bytes: number): void {
    this.#refcountTableOffset = offset;
    this.#refcountTableBytes = bytes;
  }

  /** What fixed metadata the cluster at host offset `offset` overlaps ("header", "L1 table", "refcount table"), or undefined. */
  overlap(offset: number): string | undefined {
    const end = offset + this.#clusterSize;
    if (offset < this.#clusterSize) return "header";
    if (end > this.#l1Offset && offset < this.#l1Offset + this.#l1Bytes) return "L1 table";
    if (end > this.#refcountTableOffset && offset < this.#refcountTableOffset + this.#refcountTableBytes) return "refcount table";
    return undefined;
  }
}
