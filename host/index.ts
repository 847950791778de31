/**
 * tandem: fault tolerance, live migration, paravirtual disks and copy-on-write images for
 * guests of JavaScript emulators. This is the library's public surface.
 *
 * @packageDocumentation
 */

export { ErrorCode, TandemError } from "./errors.ts";
export { VERSION } from "./wasm/embedded.generated.ts";
export { Heap, WASM_PAGE_SIZE, type HeapOptions } from "./wasm/heap.ts";
export { simdSupported } from "./wasm/loader.ts";
export { BAD_INDEX, KERNEL_FLAVORS, defaultFlavor, kernelsFor, type KernelFlavor, type Kernels } from "./wasm/kernels.ts";
export { GuestMemory, MAX_GUEST_BYTES, PAGE_SHIFT, PAGE_SIZE, type GuestRegion } from "./memory/guest-memory.ts";
export { DirtyLogBase, DirtyLogState, nextDirtyLogState, type DirtyLog, type DirtyLogEvent } from "./memory/dirty-log.ts";
export { BitmapDirtyLog, type BitmapDirtyLogOptions } from "./memory/bitmap-dirty-log.ts";
export { DetectingDirtyLog, type DetectingDirtyLogOptions } from "./memory/detecting-dirty-log.ts";
export { MarkMapDirtyLog, type MarkMapRegion } from "./memory/mark-map-dirty-log.ts";
export { VerifyingDirtyLog, type LastWriteOf, type VerifyCounts } from "./memory/verifying-dirty-log.ts";
export { DeviceStateEncoder, applyDeviceStateDelta } from "./protocol/device-delta.ts";
export { ZeroPageFinder, type ZeroPageFinderOptions } from "./memory/zero-pages.ts";
export { Cmd, CMD_NAMES, FrameDecoder, HEADER_SIZE as FRAME_HEADER_SIZE, cmdMask, type FrameSink, type FrameDecoderOptions } from "./protocol/frame.ts";
export { SessionState, senderTransition, receiverTransition, type SenderEvent, type ReceiverEvent } from "./protocol/session-state.ts";
export { TransactionSender, type SenderOptions, type SenderStats } from "./protocol/sender.ts";
export {
  TransactionReceiver, type ReceivedTransaction, type ReceiverOptions, type ReceiverStats, type TransactionConsumer,
} from "./protocol/receiver.ts";
export { TransportBase, memoryPair, type Transport } from "./protocol/transport.ts";
export { connect, listen, SocketTransport, type SocketAddress, type TransportServer } from "./protocol/socket-transport.ts";
export { FaultyTransport, type FaultOptions } from "./protocol/faulty-transport.ts";
export { PageDeltaCodec, type PageDeltaOptions } from "./protocol/page-delta.ts";
export { StreamWriter } from "./protocol/stream/writer.ts";
export { StreamReader } from "./protocol/stream/reader.ts";
export { RecordType, type StreamHeader, type StreamRecord } from "./protocol/stream/format.ts";
export { configureTracing, tracerFor, type TraceCategory, type Tracer, type TraceSink } from "./trace.ts";
export { DELTA_TOO_LARGE, SCAN_SLACK } from "./wasm/kernels.ts";
export { startOperation, type OpContext, type OpHandle, type OpOptions, type OpProgress } from "./ops/operation.ts";
export { checkIdentity, contentDigest, guestIdentity, identityDifferences, type GuestIdentity, type IdentityField } from "./machine/guest-identity.ts";
export type { Machine, MachineDisk, MachineOutput } from "./machine/machine.ts";
export { ReferenceMachine, type ReferenceMachineOptions } from "./machine/reference-machine.ts";
export { applyCheckpoint, checkLayout, type AppliedCheckpoint } from "./replication/apply-checkpoint.ts";
export { replicate, type ReplicateOptions, type ReleasedOutput, type CheckpointStats } from "./replication/primary.ts";
export { standby, type StandbyOptions, type StandbyResult } from "./replication/secondary.ts";
export { migrate, type MigrateOptions, type MigrationResult } from "./replication/migrate.ts";
export { save, restore, type SaveResult } from "./replication/save-restore.ts";
export { DiskBase, mergeExtents, type Disk, type DiskExtent, type DiskInfo } from "./disk/disk.ts";
export { FileBlockFile, type BlockFile } from "./disk/block-file.ts";
export type { CheckReport, DiskCreateOptions, DiskFormat, DiskOpenOptions, FormatOpenContext } from "./disk/format.ts";
export { MAX_CHAIN_DEPTH, checkImage, createImage, formatByName, formatNames, openDisk, probeFormat, registerFormat } from "./disk/registry.ts";
export { RawDisk } from "./disk/raw-disk.ts";
export { CowDisk } from "./disk/cow/cow-disk.ts";
export { Qcow2Disk } from "./disk/qcow2/qcow2-disk.ts";
export { TrackedDisk, type BatchRecord, type DiskBatch, type TrackedDiskOptions } from "./disk/write-tracker.ts";
export { applyBatch, recoverJournal, type ApplyBatchOptions, type ApplyReport, type RecoveryReport } from "./disk/batch-journal.ts";
export { XenStore, XenStoreConnection, type XenStoreLimits, type XenStoreOptions, type WatchCallback } from "./xen/xenstore/store.ts";
export { serveXenStore, type XenStoreServer, type XenStoreServerOptions } from "./xen/xenstore/server.ts";
export { XenStoreClient } from "./xen/xenstore/client.ts";
export { XenStoreError, type XsErrno } from "./xen/xenstore/xs-error.ts";
export { GrantTable, grantStatusError, type GrantCopySegment, type GrantTableOptions } from "./xen/grants/grant-table.ts";
export { GrantFlag, GrantStatus } from "./xen/grants/grant-entry.ts";
export { GrantMapping } from "./xen/grants/grant-mapping.ts";
export { EventChannels, type EventChannelsOptions, type EventHandler } from "./xen/event-channel.ts";
export { XenbusState, backendTransition, frontendTransition, type BackendEvent, type FrontendEvent } from "./xen/xenbus/states.ts";
export { XenbusBackend, type BackendDevice, type XenbusBackendOptions } from "./xen/xenbus/backend.ts";
export { XenbusFrontend, type FrontendDevice, type XenbusFrontendOptions } from "./xen/xenbus/frontend.ts";
export { createDevice, removeDevice, unplugDevice, type DeviceKeys } from "./xen/xenbus/toolstack.ts";
export { BlkifRequestParser, RequestStatus, responseStatusFor, type BlkifRequest, type BlkifSegment, type ParseResult } from "./xen/blkif/request-parser.ts";
export { XenBlockDevice, MAX_RING_PAGE_ORDER, type XenBlockDeviceOptions, type XenBlockDeviceType } from "./xen/block/xen-block-device.ts";
export { XenBlockDataplane, type DataplaneOptions, type DataplaneStats } from "./xen/block/dataplane.ts";
export { XenBlockFrontend, type BlockResult, type XenBlockFrontendOptions } from "./xen/block/frontend.ts";
export { NbdServer, type NbdAddress, type NbdLog, type NbdServerOptions } from "./nbd/server.ts";
