/**
 * The NBD protocol's numbers and wire layouts, as the NBD protocol document defines them
 * (NetworkBlockDevice/nbd, doc/proto.md; cited below as "proto.md", by section). All fields are
 * big-endian ("network byte order", proto.md "Conventions").
 */

/** "NBDMAGIC": the first 8 bytes the server sends (proto.md "Newstyle negotiation"). */
export const NBDMAGIC = 0x4e42444d41474943n;
/** "IHAVEOPT": follows NBDMAGIC in the greeting, and starts every client option (proto.md "Newstyle negotiation"). */
export const IHAVEOPT = 0x49484156454f5054n;
/** Starts every option reply (proto.md "Option haggling", "Server replies"). */
export const NBD_REP_MAGIC = 0x0003e889045565a9n;
/** Starts every transmission request (proto.md "Request message"). */
export const NBD_REQUEST_MAGIC = 0x25609513;
/** Starts a simple reply (proto.md "Simple reply message"). */
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
/** Starts a structured reply chunk (proto.md "Structured reply chunk message"). */
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** The IANA-registered NBD TCP port (proto.md "Protocol phases"). */
export const NBD_DEFAULT_PORT = 10809;

// Handshake flags, server to client, 16 bits (proto.md "Handshake flags").
/** The server speaks fixed newstyle. */
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
/** The server can omit the 124 zero bytes after NBD_OPT_EXPORT_NAME's reply. */
export const NBD_FLAG_NO_ZEROES = 1 << 1;

// Client flags, 32 bits (proto.md "Client flags").
/** The client speaks fixed newstyle. */
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
/** The client wants no 124 zero bytes after NBD_OPT_EXPORT_NAME's reply. */
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// Transmission flags, 16 bits (proto.md "Transmission flags").
/** Always set: the other flags mean something. */
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
/** The export is read-only. */
export const NBD_FLAG_READ_ONLY = 1 << 1;
/** The server supports NBD_CMD_FLUSH. */
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
/** The server supports NBD_CMD_FLAG_FUA. */
export const NBD_FLAG_SEND_FUA = 1 << 3;
/** The export has the characteristics of a rotational medium. */
export const NBD_FLAG_ROTATIONAL = 1 << 4;
/** The server supports NBD_CMD_TRIM. */
export const NBD_FLAG_SEND_TRIM = 1 << 5;
/** The server supports NBD_CMD_WRITE_ZEROES. */
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
/** The server supports NBD_CMD_FLAG_DF (needs structured replies). */
export const NBD_FLAG_SEND_DF = 1 << 7;
/** Several connections to the export see each other's writes, and a flush on one covers all. */
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;

// Options (proto.md "Option types").
/** Choose an export and end the handshake (no error reply possible). */
export const NBD_OPT_EXPORT_NAME = 1;
/** The client ends the session. */
export const NBD_OPT_ABORT = 2;
/** List the exports. */
export const NBD_OPT_LIST = 3;
/** Upgrade to TLS. */
export const NBD_OPT_STARTTLS = 5;
/** Describe an export without choosing it. */
export const NBD_OPT_INFO = 6;
/** Describe an export and choose it, ending the handshake. */
export const NBD_OPT_GO = 7;
/** Use structured replies in transmission. */
export const NBD_OPT_STRUCTURED_REPLY = 8;
/** List metadata contexts matching queries. */
export const NBD_OPT_LIST_META_CONTEXT = 9;
/** Select metadata contexts for NBD_CMD_BLOCK_STATUS. */
export const NBD_OPT_SET_META_CONTEXT = 10;

// Option reply types (proto.md "Option reply types"); errors have bit 31 set.
/** The option succeeded (or the last of a list of replies). */
export const NBD_REP_ACK = 1;
/** One export, in reply to NBD_OPT_LIST. */
export const NBD_REP_SERVER = 2;
/** One fact about an export, in reply to NBD_OPT_INFO or NBD_OPT_GO. */
export const NBD_REP_INFO = 3;
/** One metadata context, in reply to NBD_OPT_LIST_META_CONTEXT or NBD_OPT_SET_META_CONTEXT. */
export const NBD_REP_META_CONTEXT = 4;
const REP_ERROR = 0x80000000;
/** The option is unknown to this server. */
export const NBD_REP_ERR_UNSUP = REP_ERROR + 1;
/** The option is forbidden by policy. */
export const NBD_REP_ERR_POLICY = REP_ERROR + 2;
/** The option is malformed or not valid now. */
export const NBD_REP_ERR_INVALID = REP_ERROR + 3;
/** The option is not available on this platform. */
export const NBD_REP_ERR_PLATFORM = REP_ERROR + 4;
/** TLS is required first. */
export const NBD_REP_ERR_TLS_REQD = REP_ERROR + 5;
/** The export does not exist. */
export const NBD_REP_ERR_UNKNOWN = REP_ERROR + 6;
/** The server is shutting down. */
export const NBD_REP_ERR_SHUTDOWN = REP_ERROR + 7;
/** The option's data is larger than the server accepts. */
export const NBD_REP_ERR_TOO_BIG = REP_ERROR + 9;

// Information types of NBD_REP_INFO (proto.md "NBD_OPT_INFO and NBD_OPT_GO").
/** Size (64 bits) and transmission flags (16 bits): always sent. */
export const NBD_INFO_EXPORT = 0;
/** The export's canonical name. */
export const NBD_INFO_NAME = 1;
/** A human-readable description. */
export const NBD_INFO_DESCRIPTION = 2;
/** Minimum, preferred and maximum block sizes (32 bits each). */
export const NBD_INFO_BLOCK_SIZE = 3;

// Commands (proto.md "Request types").
/** Read `length` bytes at `offset`. */
export const NBD_CMD_READ = 0;
/** Write the `length`-byte payload that follows the request at `offset`. */
export const NBD_CMD_WRITE = 1;
/** Disconnect: the server finishes outstanding requests and closes; no reply. */
export const NBD_CMD_DISC = 2;
/** Make every completed write durable. */
export const NBD_CMD_FLUSH = 3;
/** Discard a range (it may then read as anything; tandem's disks read zeros). */
export const NBD_CMD_TRIM = 4;
/** Prefetch a range (not supported by tandem: ENOTSUP). */
export const NBD_CMD_CACHE = 5;
/** Make a range read as zeros. */
export const NBD_CMD_WRITE_ZEROES = 6;
/** Report the selected metadata contexts' status of a range. */
export const NBD_CMD_BLOCK_STATUS = 7;

// Command flags, 16 bits (proto.md "Command flags").
/** Force unit access: the write is durable before the reply. */
export const NBD_CMD_FLAG_FUA = 1 << 0;
/** NBD_CMD_WRITE_ZEROES must not punch a hole (keep the range allocated). */
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
/** "Don't fragment": at most one content chunk in a read's reply. */
export const NBD_CMD_FLAG_DF = 1 << 2;
/** NBD_CMD_BLOCK_STATUS: one extent per context is enough. */
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;

// Structured reply flags and types (proto.md "Structured reply flags", "Structured reply types").
/** The last chunk of a reply. */
export const NBD_REPLY_FLAG_DONE = 1 << 0;
/** No payload: the reply is complete (with NBD_REPLY_FLAG_DONE). */
export const NBD_REPLY_TYPE_NONE = 0;
/** 64-bit offset then data. */
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
/** 64-bit offset then a 32-bit hole size. */
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
/** 32-bit context id then (32-bit length, 32-bit flags) descriptors. */
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
/** 32-bit error, 16-bit message length, message. */
export const NBD_REPLY_TYPE_ERROR = (1 << 15) + 1;

// Error values (proto.md "Error values"): the Linux errno numbers.
/** Operation not permitted (a write to a read-only export). */
export const NBD_EPERM = 1;
/** Input/output error. */
export const NBD_EIO = 5;
/** Out of memory. */
export const NBD_ENOMEM = 12;
/** Invalid argument (out of range, too long). */
export const NBD_EINVAL = 22;
/** No space left. */
export const NBD_ENOSPC = 28;
/** Value too large (a DF read that cannot be one chunk). */
export const NBD_EOVERFLOW = 75;
/** Operation not supported (an unknown command). */
export const NBD_ENOTSUP = 95;
/** The server is shutting down. */
export const NBD_ESHUTDOWN = 108;

/** The metadata context of allocation status (proto.md "Metadata contexts", "base:allocation"). */
export const BASE_ALLOCATION = "base:allocation";
/** base:allocation flag: the range is a hole (not allocated). */
export const NBD_STATE_HOLE = 1 << 0;
/** base:allocation flag: the range reads as zeros. */
export const NBD_STATE_ZERO = 1 << 1;

/**
 * Strings (export names, queries, messages) longer than this are refused (proto.md
 * "Conventions": a string MUST be no longer than 4096 bytes).
 */
export const MAX_STRING_BYTES = 4096;

// Greeting (proto.md "Fixed newstyle negotiation"): NBDMAGIC, IHAVEOPT, handshake flags.
/** Bytes of the greeting. */
export const GREETING_BYTES = 18;
/** The client's flags after the greeting. */
export const CLIENT_FLAGS_BYTES = 4;

// Option request header (proto.md "Option haggling"): IHAVEOPT, option, data length.
/** Bytes of an option request header. */
export const OPTION_HEADER_BYTES = 16;
/** Offset of the option code. */
export const OPTION_HEADER_OPTION = 8;
/** Offset of the option data length. */
export const OPTION_HEADER_LENGTH = 12;

// Option reply header (proto.md "Option haggling"): magic, option, reply type, data length.
/** Bytes of an option reply header. */
export const OPTION_REPLY_HEADER_BYTES = 20;

/** NBD_OPT_EXPORT_NAME's reply: size (64), transmission flags (16), then 124 zero bytes unless NO_ZEROES. */
export const EXPORT_NAME_REPLY_ZEROES = 124;

// Request (proto.md "Request message"): magic 32, command flags 16, type 16, cookie 64, offset 64, length 32.
/** Bytes of a request header. */
export const REQUEST_BYTES = 28;
/** Offset of the request magic. */
export const REQUEST_MAGIC = 0;
/** Offset of the command flags. */
export const REQUEST_FLAGS = 4;
/** Offset of the command type. */
export const REQUEST_TYPE = 6;
/** Offset of the cookie (the client's handle, echoed in the reply). */
export const REQUEST_COOKIE = 8;
/** Offset of the export offset. */
export const REQUEST_OFFSET = 16;
/** Offset of the length. */
export const REQUEST_LENGTH = 24;

// Simple reply (proto.md "Simple reply message"): magic 32, error 32, cookie 64.
/** Bytes of a simple reply header. */
export const SIMPLE_REPLY_BYTES = 16;

// Structured reply chunk header (proto.md "Structured reply chunk message"): magic 32, flags 16, type 16, cookie 64, length 32.
/** Bytes of a structured reply chunk header. */
export const CHUNK_HEADER_BYTES = 20;

/** Writes an option reply header at `at`. */
export function writeOptionReplyHeader(view: DataView, at: number, option: number, type: number, length: number): void {
  view.setBigUint64(at, NBD_REP_MAGIC);
  view.setUint32(at + 8, option);
  view.setUint32(at + 12, type);
  view.setUint32(at + 16, length);
}

/** Writes a simple reply header. */
export function writeSimpleReply(view: DataView, at: number, error: number, cookie: bigint): void {
  view.setUint32(at, NBD_SIMPLE_REPLY_MAGIC);
  view.setUint32(at + 4, error);
  view.setBigUint64(at + 8, cookie);
}

/** Writes a structured reply chunk header. */
export function writeChunkHeader(view: DataView, at: number, flags: number, type: number, cookie: bigint, length: number): void {
  view.setUint32(at, NBD_STRUCTURED_REPLY_MAGIC);
  view.setUint16(at + 4, flags);
  view.setUint16(at + 6, type);
  view.setBigUint64(at + 8, cookie);
  view.setUint32(at + 16, length);
}
