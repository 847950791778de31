/**
 * Every error tandem raises on purpose is a {@link TandemError} with a stable `code`, so
 * callers can branch on the code and users can search for it.
 */

/** The error codes, each with what it means. */
export const ErrorCode = {
  /** An argument is not a number, not an integer, negative, or otherwise malformed. */
  BadArgument: "E_BAD_ARGUMENT",
  /** An address, length or page index falls outside the region it refers to. */
  OutOfRange: "E_OUT_OF_RANGE",
  /** A guest memory region is misaligned, empty, too large or not inside its buffer. */
  BadRegion: "E_BAD_REGION",
  /** A memory could not be grown to hold tandem's scratch space. */
  HeapFull: "E_HEAP_FULL",
  /** The requested kernels cannot run here (for example SIMD on a runtime without it). */
  KernelUnavailable: "E_KERNEL_UNAVAILABLE",
  /** A dirty log was read before {@link DirtyLog.arm} was called. */
  NotArmed: "E_NOT_ARMED",
} as const;

/** One of the values of {@link ErrorCode}. */
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** An error with a stable machine-readable code. */
export class TandemError extends Error {
  /** The stable code; see {@link ErrorCode}. */
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string) {
    super(`${code}: ${message}`);
    this.name = "TandemError";
    this.code = code;
  }
}
