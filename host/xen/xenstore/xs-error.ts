/**
 * xenstore's errors: the errno names of xs_wire.h's `xsd_errors` table, which travel on the wire
 * as strings, and the {@link XenStoreError} that carries one inside tandem.
 */

import { ErrorCode, TandemError } from "../../errors.ts";

/**
 * The errno names xenstored may answer, in the order of `xsd_errors` in
 * xen/include/public/io/xs_wire.h (Xen 4.17; EPERM is the newest).
 */
export const XS_ERRNOS = [
  "EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
  "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM",
] as const;

/** One errno name of {@link XS_ERRNOS}. */
export type XsErrno = (typeof XS_ERRNOS)[number];

/** Whether `name` is one of the errno names xs_wire.h defines. */
export function isXsErrno(name: string): name is XsErrno {
  return (XS_ERRNOS as readonly string[]).includes(name);
}

/** The tandem error code for a xenstore errno (see host/errors.ts, "Xen"). */
export function errorCodeForErrno(errno: XsErrno): ErrorCode {
  switch (errno) {
    case "ENOENT":
      return ErrorCode.XsNotFound;
    case "EACCES":
    case "EPERM":
      return ErrorCode.XsPermission;
    case "EAGAIN":
      return ErrorCode.XsConflict;
    case "E2BIG":
    case "ENOSPC":
      return ErrorCode.XsLimit;
    default:
      return ErrorCode.XsInvalid;
  }
}

/** A xenstore request refused with an errno; the server sends `errno` back as the ERROR payload. */
export class XenStoreError extends TandemError {
  /** The xs_wire errno name, e.g. "ENOENT". */
  readonly errno: XsErrno;

  constructor(errno: XsErrno, message: string) {
    super(errorCodeForErrno(errno), `${errno}: ${message}`);
    this.name = "XenStoreError";
    this.errno = errno;
  }
}
