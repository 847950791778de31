/**
 * Node permissions (docs/misc/xenstore.txt, "GET_PERMS"; xenstored's perm_for_conn). A node's
 * list starts with its owner and the access every unlisted domain gets; later entries give named
 * domains their own access. Letters: `n` none, `r` read, `w` write, `b` both. The owner and
 * privileged callers (dom0) always have full access.
 */

import { XenStoreError } from "./xs-error.ts";

/** One access letter. */
export type Access = "n" | "r" | "w" | "b";

/** One entry of a permission list: a domain and its access. */
export interface Perm {
  readonly domid: number;
  readonly access: Access;
}

/** A node's permission list; entry 0 is the owner and the default access. */
export type Perms = readonly Perm[];

/** Who is asking: its domain, and whether it is privileged (dom0: every access, no quotas). */
export interface Caller {
  readonly domid: number;
  readonly privileged: boolean;
}

/** The highest domain id the wire can name (domids are u16). */
export const MAX_DOMID = 0xffff;

/** "b5" → { domid: 5, access: "b" }; throws EINVAL on anything else. */
export function parsePerm(text: string): Perm {
  const match = /^([nrwb])([0-9]{1,5})$/.exec(text);
  const domid = match ? Number(match[2]) : NaN;
  if (!match || domid > MAX_DOMID) {
    throw new XenStoreError("EINVAL", `'${text.slice(0, 40)}' is not a permission: a letter n, r, w or b and a domain id 0..${MAX_DOMID}`);
  }
  return { domid, access: match[1] as Access };
}

/** { domid: 5, access: "b" } → "b5". */
export function formatPerm(perm: Perm): string {
  return `${perm.access}${perm.domid}`;
}

/** The node's owner. */
export function ownerOf(perms: Perms): number {
  return perms[0].domid;
}

/** The access `caller` has to a node with `perms`. */
export function accessFor(perms: Perms, caller: Caller): Access {
  if (caller.privileged || perms[0].domid === caller.domid) return "b";
  for (let i = 1; i < perms.length; i++) {
    if (perms[i].domid === caller.domid) return perms[i].access;
  }
  return perms[0].access;
}

/** Whether the access allows reading. */
export function allowsRead(access: Access): boolean {
  return access === "r" || access === "b";
}

/** Whether the access allows writing. */
export function allowsWrite(access: Access): boolean {
  return access === "w" || access === "b";
}
