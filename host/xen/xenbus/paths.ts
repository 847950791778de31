/**
 * Where a device's two xenstore directories are, as Xen's toolstack lays them out (libxl's
 * libxl__device_backend_path and libxl__device_frontend_path):
 * `/local/domain/<backend>/backend/<type>/<frontend>/<devid>` and
 * `/local/domain/<frontend>/device/<type>/<devid>`.
 */

import { ErrorCode, TandemError } from "../../errors.ts";

/** Names one device: its type (`vbd`, `vif`...), both domains, and its id within the frontend. */
export interface XenbusDeviceId {
  type: string;
  backendDomid: number;
  frontendDomid: number;
  /** The device's number (a vbd's is its virtual-device number, e.g. 51712 for xvda). */
  devid: number;
}

/** The highest domain id of a real domain (DOMID_FIRST_RESERVED - 1 in xen.h). */
const MAX_DOMID = 0x7fef;
const TYPE = /^[a-z0-9_-]{1,32}$/i;

/** The backend's directory. */
export function backendPath(id: XenbusDeviceId): string {
  checkId(id);
  return `/local/domain/${id.backendDomid}/backend/${id.type}/${id.frontendDomid}/${id.devid}`;
}

/** The frontend's directory. */
export function frontendPath(id: XenbusDeviceId): string {
  checkId(id);
  return `/local/domain/${id.frontendDomid}/device/${id.type}/${id.devid}`;
}

function checkId(id: XenbusDeviceId): void {
  if (!TYPE.test(id.type)) throw new TandemError(ErrorCode.BadArgument, `device type '${id.type}': expected 1 to 32 letters, digits, '-' or '_'`);
  for (const [name, domid] of [["backend", id.backendDomid], ["frontend", id.frontendDomid]] as const) {
    if (!Number.isInteger(domid) || domid < 0 || domid > MAX_DOMID) throw new TandemError(ErrorCode.BadArgument, `${name} domain ${domid}: a domain id is 0 to ${MAX_DOMID}`);
  }
  if (!Number.isInteger(id.devid) || id.devid < 0 || id.devid > 0xffffffff) throw new TandemError(ErrorCode.BadArgument, `device id ${id.devid}: expected an integer 0 to 2^32-1`);
}
