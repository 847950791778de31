/**
 * The xen-block backend device (after QEMU's hw/block/xen-block.c, seed 002, and Linux blkback's
 * xenbus.c): realize publishes the device's keys and waits in InitWait; connect reads the
 * frontend's ring keys (each once) and starts the {@link XenBlockDataplane}; disconnect stops it;
 * unplug asks for the device's removal the way the toolstack does. docs/xen-block.md lists the
 * keys, states and limits.
 */

import { ErrorCode, TandemError } from "../../errors.ts";
import type { Disk } from "../../disk/disk.ts";
import type { KernelFlavor } from "../../wasm/kernels.ts";
import type { EventChannels } from "../event-channel.ts";
import type { GrantTable } from "../grants/grant-table.ts";
import { BLKIF_SECTOR_SIZE, MAX_INDIRECT_PAGES_PER_REQUEST, SEGMENTS_PER_INDIRECT_PAGE, abiForProtocol, type BlkifAbi } from "../blkif/ring-layout.ts";
import { XenbusBackend } from "../xenbus/backend.ts";
import type { XenbusKeys, XenbusReader } from "../xenbus/keys.ts";
import { backendPath, frontendPath, type XenbusDeviceId } from "../xenbus/paths.ts";
import { unplugDevice } from "../xenbus/toolstack.ts";
import { inTransaction, readOptional, type XenbusStore } from "../xenbus/xenbus-store.ts";
import { DEFAULT_MAX_BATCH, XenBlockDataplane } from "./dataplane.ts";

/** blkif.h VDISK_* bits of the `info` key. */
export const VdiskInfo = {
  Cdrom: 0x1,
  Removable: 0x2,
  ReadOnly: 0x4,
} as const;

/** The largest max-ring-page-order: 16 pages. */
export const MAX_RING_PAGE_ORDER = 4;
/** Default feature-max-indirect-segments (Linux blkback's default). */
export const DEFAULT_MAX_INDIRECT_SEGMENTS = 256;

/** What a device is a disk or a CD-ROM (read-only). */
export type XenBlockDeviceType = "disk" | "cdrom";

/** How a device is set up. */
export interface XenBlockDeviceOptions {
  /** The backend domain's store connection (privileged, as dom0's is: it writes the frontend's virtual-device and device-type). */
  store: XenbusStore;
  frontendDomid: number;
  /** The virtual-device number, which is also the device id (e.g. 51712 for xvda). */
  devid: number;
  disk: Disk;
  /** The frontend's grant table. */
  grants: GrantTable;
  channels: EventChannels;
  /** Default "disk". A CD-ROM is always read-only. */
  deviceType?: XenBlockDeviceType;
  /** Serve reads only; default the disk's own read-only flag. */
  readOnly?: boolean;
  /** max-ring-page-order, 0..4; default 4 (QEMU's default). */
  maxRingPageOrder?: number;
  /** feature-max-indirect-segments, 0 (not offered) to 4096; default 256. */
  maxIndirectSegments?: number;
  /** Offer discard; default true unless read-only. */
  discard?: boolean;
  /** Requests served per pass; default 32. */
  maxBatch?: number;
  kernels?: KernelFlavor;
  /** Where errors go (a refused connect after it was written to the error node, a halted ring). */
  onError?: (error: unknown) => void;
  /** Called once the device is removed (after unplug, when the frontend has let go). */
  onRemoved?: () => void;
}

/** A decimal u32 as C's "%u" reads xenstore values; undefined for anything else. */
function parseU32(text: string | undefined): number | undefined {
  if (text === undefined || !/^[0-9]{1,10}$/.test(text)) return undefined;
  const value = Number(text);
  return value <= 0xffffffff ? value : undefined;
}

/** One xen-block backend device. */
export class XenBlockDevice {
  /** The device as xenbus names it. */
  readonly id: XenbusDeviceId;
  readonly readOnly: boolean;
  readonly deviceType: XenBlockDeviceType;
  readonly maxRingPageOrder: number;
  readonly maxIndirectSegments: number;
  /** The disk's size in 512-byte sectors (a partial last sector is not served). */
  readonly sectors: number;
  readonly dataplane: XenBlockDataplane;
  readonly #options: XenBlockDeviceOptions;
  readonly #discard: boolean;
  #backend: XenbusBackend | undefined;

  constructor(options: XenBlockDeviceOptions) {
    const deviceType = options.deviceType ?? "disk";
    if (deviceType !== "disk" && deviceType !== "cdrom") throw new TandemError(ErrorCode.BadArgument, `device-type '${String(deviceType)}': expected disk or cdrom`);
    const order = options.maxRingPageOrder ?? MAX_RING_PAGE_ORDER;
    if (!Number.isInteger(order) || order < 0 || order > MAX_RING_PAGE_ORDER) {
      throw new TandemError(ErrorCode.BadArgument, `max-ring-page-order ${order}: expected 0 to ${MAX_RING_PAGE_ORDER}`);
    }
    const indirect = options.maxIndirectSegments ?? DEFAULT_MAX_INDIRECT_SEGMENTS;
    const indirectLimit = MAX_INDIRECT_PAGES_PER_REQUEST * SEGMENTS_PER_INDIRECT_PAGE;
    if (!Number.isInteger(indirect) || indirect < 0 || indirect > indirectLimit) {
      throw new TandemError(ErrorCode.BadArgument, `feature-max-indirect-segments ${indirect}: expected 0 to ${indirectLimit}`);
    }
    this.#options = options;
    this.id = { type: "vbd", backendDomid: options.store.domid, frontendDomid: options.frontendDomid, devid: options.devid };
    backendPath(this.id);
    this.deviceType = deviceType;
    this.readOnly = deviceType === "cdrom" || (options.readOnly ?? options.disk.readOnly);
    if (!this.readOnly && options.disk.readOnly) throw new TandemError(ErrorCode.DiskReadOnly, "a read-only disk cannot back a writable xen-block device; open it writable or set readOnly");
    this.maxRingPageOrder = order;
    this.maxIndirectSegments = indirect;
    this.#discard = !this.readOnly && (options.discard ?? true);
    this.sectors = Math.floor(options.disk.size / BLKIF_SECTOR_SIZE);
    this.dataplane = new XenBlockDataplane({
      grants: options.grants,
      channels: options.channels,
      backendDomid: options.store.domid,
      frontendDomid: options.frontendDomid,
      device: {
        disk: options.disk, sectors: this.sectors, readOnly: this.readOnly, flush: true, barrier: true, discard: this.#discard,
        maxIndirectSegments: indirect, logicalSectorSize: BLKIF_SECTOR_SIZE,
      },
      maxBatch: options.maxBatch ?? DEFAULT_MAX_BATCH,
      kernels: options.kernels,
      onError: options.onError,
    });
  }

  /** The xenbus backend, once realized. */
  get backend(): XenbusBackend {
    if (this.#backend === undefined) throw new TandemError(ErrorCode.InvalidState, `xen-block ${backendPath(this.id)} is not realized`);
    return this.#backend;
  }

  /** The `info` bitmap (VDISK_*). */
  get info(): number {
    return (this.deviceType === "cdrom" ? VdiskInfo.Cdrom : 0) | (this.readOnly ? VdiskInfo.ReadOnly : 0);
  }

  /**
   * Writes the frontend's virtual-device and device-type (as QEMU's realize does), then starts
   * the xenbus backend, which publishes the features with InitWait. The toolstack must have
   * created the device's directories (toolstack.ts createDevice).
   */
  async realize(): Promise<void> {
    if (this.#backend !== undefined) throw new TandemError(ErrorCode.InvalidState, `xen-block ${backendPath(this.id)} is already realized`);
    const { store } = this.#options;
    const front = frontendPath(this.id);
    inTransaction(store, (tx) => {
      if (readOptional(store, `${front}/backend`, tx) === undefined) {
        throw new TandemError(ErrorCode.InvalidState, `xen-block: the frontend directory ${front} is missing; create the device first (createDevice)`);
      }
      store.write(`${front}/virtual-device`, String(this.id.devid), tx);
      store.write(`${front}/device-type`, this.deviceType, tx);
    });
    const backend = new XenbusBackend({
      store,
      type: "vbd",
      frontendDomid: this.id.frontendDomid,
      devid: this.id.devid,
      device: {
        features: () => this.#features(),
        connect: (frontend) => this.#connect(frontend),
        disconnect: () => this.dataplane.stop(),
      },
      onError: this.#options.onError,
      onRemoved: this.#options.onRemoved,
    });
    this.#backend = backend;
    await backend.start();
  }

  /** Unplugs the device as the toolstack does (online 0, Closing); it goes once the frontend lets go. */
  unplug(): void {
    unplugDevice(this.#options.store, this.id);
  }

  /** Stops reacting to xenstore and stops the dataplane, leaving the directories as they are. */
  destroy(): void {
    this.#backend?.stop();
    this.dataplane.stop();
  }

  #properties(): XenbusKeys {
    return { info: this.info, "sector-size": BLKIF_SECTOR_SIZE, sectors: this.sectors };
  }

  #features(): XenbusKeys {
    const keys: Record<string, string | number> = {
      "feature-flush-cache": 1,
      "feature-barrier": 1,
      "max-ring-page-order": this.maxRingPageOrder,
      mode: this.readOnly ? "r" : "w",
      ...this.#properties(),
    };
    if (this.maxIndirectSegments > 0) keys["feature-max-indirect-segments"] = this.maxIndirectSegments;
    if (this.#discard) {
      keys["feature-discard"] = 1;
      keys["discard-granularity"] = BLKIF_SECTOR_SIZE;
      keys["discard-alignment"] = 0;
    }
    return keys;
  }

  /** Reads the frontend's keys once each, refusing bad ones with the seed's messages, and starts the dataplane. */
  #connect(frontend: XenbusReader): XenbusKeys {
    const refs: number[] = [];
    const orderText = frontend.read("ring-page-order");
    if (orderText === undefined) {
      const ref = parseU32(frontend.read("ring-ref"));
      if (ref === undefined) throw new TandemError(ErrorCode.BadArgument, "failed to read ring-ref");
      refs.push(ref);
    } else {
      const order = parseU32(orderText);
      if (order === undefined || order > this.maxRingPageOrder) throw new TandemError(ErrorCode.BadArgument, `invalid ring-page-order (${orderText.slice(0, 32)})`);
      for (let i = 0; i < 1 << order; i++) {
        const ref = parseU32(frontend.read(`ring-ref${i}`));
        if (ref === undefined) throw new TandemError(ErrorCode.BadArgument, `failed to read ring-ref${i}`);
        refs.push(ref);
      }
    }
    const port = parseU32(frontend.read("event-channel"));
    if (port === undefined) throw new TandemError(ErrorCode.BadArgument, "failed to read event-channel");
    const protocol = frontend.read("protocol");
    let abi: BlkifAbi;
    if (protocol === undefined || protocol === "native" || protocol === "x86_64-abi" || protocol === "x86_32-abi") {
      abi = abiForProtocol(protocol ?? "native");
    } else {
      throw new TandemError(ErrorCode.BadArgument, `unknown protocol (${protocol.slice(0, 32)})`);
    }
    this.dataplane.start({ refs, port, abi });
    return this.#properties();
  }
}
