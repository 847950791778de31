/**
 * The v86 adapter, as the package's `tandem/v86` entry point (kept apart from the main entry so
 * that importing tandem does not load v86). docs/embedding.md walks through it.
 */

export { V86BootOrder, V86Machine, V86_DRIVES, builtInGuest, type V86Drive, type V86MachineOptions, type V86Tracking, type V86TrackingMode } from "./v86-machine.ts";
export { SEABIOS_PATH, SEABIOS_VGA_PATH, debianSeaBios, type Firmware } from "./firmware.ts";
export { MarkedBy, writerName } from "./v86-tracking.ts";
export { V86_VERSION, checkV86Internals } from "./v86-internals.ts";
export { describeGuest, guestFromFlags, openGuest, readGuestFile, type GuestDescription, type GuestDiskDescription, type GuestOptions, type OpenedGuest } from "./guest-description.ts";
export { v86Identity } from "./v86-identity.ts";
