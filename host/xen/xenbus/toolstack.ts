/**
 * The toolstack's part of a device's life (after libxl's libxl__device_generic_add and QEMU's
 * xen_device_unplug, seed 002): creating both directories, unplugging, removing them. It runs as a
 * privileged domain (dom0), which may create directories owned by other domains.
 */

import { writeKeys, type XenbusKeys } from "./keys.ts";
import { backendPath, frontendPath, type XenbusDeviceId } from "./paths.ts";
import { XenbusState } from "./states.ts";
import { inTransaction, readOptional, type XenbusStore } from "./xenbus-store.ts";

/** Extra keys the toolstack writes into each directory (a vbd's `virtual-device`, `device-type`, `params`...). */
export interface DeviceKeys {
  backend?: XenbusKeys;
  frontend?: XenbusKeys;
}

/**
 * Creates the device's two directories in one transaction (retried on EAGAIN), replacing any
 * left from before: the backend's owned by the backend domain with read access for the frontend,
 * holding `frontend`, `frontend-id`, `online` 1 and `state` 1; the frontend's owned by the
 * frontend domain with read access for the backend, holding `backend`, `backend-id` and `state` 1.
 */
export function createDevice(store: XenbusStore, id: XenbusDeviceId, keys: DeviceKeys = {}): void {
  const back = backendPath(id);
  const front = frontendPath(id);
  inTransaction(store, (tx) => {
    removeIfPresent(store, front, tx);
    removeIfPresent(store, back, tx);
    store.mkdir(front, tx);
    store.setPerms(front, [{ domid: id.frontendDomid, access: "n" }, { domid: id.backendDomid, access: "r" }], tx);
    store.mkdir(back, tx);
    store.setPerms(back, [{ domid: id.backendDomid, access: "n" }, { domid: id.frontendDomid, access: "r" }], tx);
    store.write(`${back}/frontend`, front, tx);
    store.write(`${back}/frontend-id`, String(id.frontendDomid), tx);
    store.write(`${back}/online`, "1", tx);
    store.write(`${back}/state`, String(XenbusState.Initialising), tx);
    writeKeys(store, back, keys.backend ?? {}, tx);
    store.write(`${front}/backend`, back, tx);
    store.write(`${front}/backend-id`, String(id.backendDomid), tx);
    store.write(`${front}/state`, String(XenbusState.Initialising), tx);
    writeKeys(store, front, keys.frontend ?? {}, tx);
  });
}

/**
 * Unplugs the device the way Xen's toolstack does: backend `online` 0 and backend `state`
 * Closing, in one transaction, retried on EAGAIN. The backend then closes and, offline, destroys
 * itself once the frontend has let go.
 */
export function unplugDevice(store: XenbusStore, id: XenbusDeviceId): void {
  const back = backendPath(id);
  inTransaction(store, (tx) => {
    store.write(`${back}/online`, "0", tx);
    store.write(`${back}/state`, String(XenbusState.Closing), tx);
  });
}

/** Removes both directories (after the backend has gone), in one transaction. */
export function removeDevice(store: XenbusStore, id: XenbusDeviceId): void {
  inTransaction(store, (tx) => {
    removeIfPresent(store, frontendPath(id), tx);
    removeIfPresent(store, backendPath(id), tx);
  });
}

/** RM answers ENOENT when even the parent is missing; a device that is not there needs no removal. */
function removeIfPresent(store: XenbusStore, path: string, tx: number): void {
  if (readOptional(store, path, tx) !== undefined) store.rm(path, tx);
}
