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

  // The transaction protocol (host/protocol/). After any of these the session is dead.
  /** A frame without payload (BEGIN, COMMIT, CANCEL, ACK, NACK) could not be written. */
  SendHeader: "E_SEND_HEADER",
  /** The stream ended or broke inside a frame header, or a header made no sense. */
  RecvHeader: "E_RECV_HEADER",
  /** A frame with payload (CONTINUE, ATOMIC) could not be written. */
  SendPayload: "E_SEND_PAYLOAD",
  /** The stream ended inside a frame's payload. */
  RecvPayload: "E_RECV_PAYLOAD",
  /** Buffered frames could not be flushed to the transport. */
  Flush: "E_FLUSH",
  /** A call or a frame that the protocol's state machine does not allow now. */
  InvalidState: "E_INVALID_STATE",
  /** A payload, frame or transaction over the configured limit. */
  PayloadTooLarge: "E_PAYLOAD_TOO_LARGE",
  /** A frame's seq is not the next one. */
  SeqMismatch: "E_SEQ_MISMATCH",
  /** A frame's transaction id is not the current one. */
  IdMismatch: "E_ID_MISMATCH",
  /** The peer closed the connection (or it broke) with the session still in use. */
  PeerClosed: "E_PEER_CLOSED",
  /** The peer did not answer within the configured time. */
  Timeout: "E_TIMEOUT",
  /** The receiver refused the transaction (NACK). The session goes on. */
  Refused: "E_REFUSED",
  /** The transaction was cancelled by the other side. The session goes on. */
  Cancelled: "E_CANCELLED",

  // The checkpoint stream (host/protocol/stream/, docs/checkpoint-stream.md).
  /** The stream's magic or version is not one this tandem reads. */
  StreamVersion: "E_STREAM_VERSION",
  /** A record type this tandem does not know. */
  StreamRecord: "E_STREAM_RECORD",
  /** A record or header that is truncated, inconsistent or out of range. */
  StreamFormat: "E_STREAM_FORMAT",

  // Long operations (host/ops/), after libxl's ERROR_FAIL, ERROR_INVAL, ERROR_GUEST_TIMEDOUT.
  /** The operation failed; the message says why. */
  Failed: "E_FAILED",
  /** The guest did not do what was asked of it (pause, resume) in time. */
  GuestTimeout: "E_GUEST_TIMEOUT",
  /** The other side of a replication or migration is gone. */
  PeerLost: "E_PEER_LOST",
  /** The operation was cancelled through its AbortSignal or handle. */
  Aborted: "E_ABORTED",

  // The pair and its witness (host/replication/pair-state.ts, host/witness/, docs/replication.md).
  /** An event the pair's state machine does not allow in its current state (a bug in the caller). */
  PairTransition: "E_PAIR_TRANSITION",
  /** This primary lost its lease or another side owns the guest: its guest is paused and nothing more is released. */
  Fenced: "E_FENCED",
  /** The witness (etcd) could not be reached, or answered something that makes no sense. */
  Witness: "E_WITNESS",

  // Emulators (host/emulators/).
  /** The emulator is not a version whose internals the adapter knows; the message names what changed. */
  EmulatorChanged: "E_EMULATOR_CHANGED",
  /** The emulator or its guest could not be started; the message says what to fix. */
  EmulatorStart: "E_EMULATOR_START",
  /** Write tracking did not mark a page the guest changed (found by a verifying dirty log); the message names the page. */
  TrackingMissed: "E_TRACKING_MISSED",

  // Guests (host/machine/guest-identity.ts, host/emulators/v86/guest-description.ts).
  /** A guest file or guest flag is malformed, names a file that cannot be read, or a value out of range; the message names the field. */
  GuestFile: "E_GUEST_FILE",
  /** The other side's guest is built from a different description; the message lists what differs. */
  GuestMismatch: "E_GUEST_MISMATCH",

  // Disks and disk images (host/disk/, docs/disks.md).
  /** The operating system refused a read, write, sync or open of an image file; the message names the file. */
  DiskIo: "E_DISK_IO",
  /** An image's metadata is malformed, inconsistent or points outside its file (corrupt or hostile). */
  DiskFormat: "E_DISK_FORMAT",
  /** A valid image that uses a feature tandem does not implement; the message names the feature. */
  DiskUnsupported: "E_DISK_UNSUPPORTED",
  /** A write, discard or repair of a disk opened read-only (or of an image marked corrupt). */
  DiskReadOnly: "E_DISK_READ_ONLY",
  /**
   * A write refused because it would land on the image's own metadata (QEMU's overlap check);
   * the image is now marked corrupt and takes no more writes until it is repaired.
   */
  DiskCorrupt: "E_DISK_CORRUPT",
  /** A backing file is missing, unreadable, too deep a chain, or a chain that loops back on itself. */
  DiskBacking: "E_DISK_BACKING",

  // Xen (host/xen/). xenstore errors also carry the xs_wire errno name (`XenStoreError.errno`).
  /** A message that breaks the xs_wire protocol (length over 4096, bad header), or a reply that makes no sense. */
  XsProtocol: "E_XS_PROTOCOL",
  /** xenstore ENOENT: no such node, transaction or watch. */
  XsNotFound: "E_XS_NOT_FOUND",
  /** xenstore EACCES or EPERM: the caller's domain may not do this to the node. */
  XsPermission: "E_XS_PERMISSION",
  /** xenstore EAGAIN: a transaction's commit conflicted with another change; retry the whole transaction. */
  XsConflict: "E_XS_CONFLICT",
  /** xenstore E2BIG or ENOSPC: a size or count limit (value size, nodes per domain, watches, transactions). */
  XsLimit: "E_XS_LIMIT",
  /** Any other xenstore refusal (EINVAL bad path or argument, EEXIST, ENOSYS, EBUSY...); the errno names it. */
  XsInvalid: "E_XS_INVALID",
  /** A grant reference outside the granting domain's grant table (Xen's GNTST_bad_gntref). */
  GrantRef: "E_GRANT_REF",
  /**
   * A grant entry that does not give this domain this access: not permit_access, granted to another
   * domain, a write through a read-only grant, or a frame outside the granter's memory.
   */
  GrantDenied: "E_GRANT_DENIED",
  /** A grant still mapped (GTF_reading/GTF_writing set) when its access is ended, or no free grant entry. */
  GrantInUse: "E_GRANT_IN_USE",
  /** An event channel port that is not open, not in the state the call needs, or none free. */
  EvtchnPort: "E_EVTCHN_PORT",

  // Network (host/net/)
  /** A frame stream from the network peer that is not QEMU's stream framing (a bad length). */
  NetFrame: "E_NET_FRAME",
  /** The network could not be had: passt missing or failing, or its socket not answering. */
  NetUnavailable: "E_NET_UNAVAILABLE",
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
