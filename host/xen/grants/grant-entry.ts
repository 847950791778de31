/**
 * The layout of a version 1 grant entry and the numbers Xen gives grant flags and grant
 * statuses, from xen/include/public/grant_table.h (Xen 4.17; Debian's libxen-dev installs it as
 * /usr/include/xen/grant_table.h). See ../shared/reference/xen-blkif.md section 7.
 */

/** Bytes of one `grant_entry_v1_t`. */
export const GRANT_ENTRY_V1_SIZE = 8;
/** `uint16_t flags` (GTF_*), at byte 0 of the entry. */
export const GRANT_ENTRY_FLAGS = 0;
/** `domid_t domid`: the domain allowed access, at byte 2. */
export const GRANT_ENTRY_DOMID = 2;
/** `uint32_t frame`: the granted frame (GFN), at byte 4. */
export const GRANT_ENTRY_FRAME = 4;

/** Bytes in a frame: a copy or a mapping never crosses one. */
export const GRANT_PAGE_SIZE = 4096;
/** Entries 0 to 7 are reserved for the toolstack (console 0, xenstore 1): GNTTAB_NR_RESERVED_ENTRIES. */
export const GNTTAB_NR_RESERVED_ENTRIES = 8;

/** The grant entry's flags (GTF_*). */
export const GrantFlag = {
  /** Type: the entry grants nothing. */
  Invalid: 0,
  /** Type: `domid` may map and access `frame`. */
  PermitAccess: 1,
  /** Type: `domid` may transfer a page into `frame` (not supported here). */
  AcceptTransfer: 2,
  /** Type: access through another grant (not supported here). */
  Transitive: 3,
  /** The two type bits. */
  TypeMask: 3,
  /** `domid` may only read. Set by the granter. */
  Readonly: 1 << 2,
  /** The grant is in use for reading. Set and cleared by Xen (here, by {@link GrantTable}). */
  Reading: 1 << 3,
  /** The grant is in use for writing. Set and cleared by Xen (here, by {@link GrantTable}). */
  Writing: 1 << 4,
  /** Only part of the page is granted (v2 semantics; refused here). */
  SubPage: 1 << 8,
} as const;

/** Per-operation results of grant operations (GNTST_*), as GNTTABOP_copy reports them. */
export const GrantStatus = {
  Okay: 0,
  GeneralError: -1,
  BadDomain: -2,
  BadGntref: -3,
  BadHandle: -4,
  PermissionDenied: -8,
  BadPage: -9,
  /** An offset and length that cross the page, or a local buffer too small. */
  BadCopyArg: -10,
} as const;
/** One of {@link GrantStatus}. */
export type GrantStatus = (typeof GrantStatus)[keyof typeof GrantStatus];
