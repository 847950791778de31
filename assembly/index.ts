// The kernels (dirty pages, frames, page deltas, Xen block requests), compiled into one module that imports its memory (env.memory),
// so one instance can scan an emulator's own RAM in place. No strings, no allocation,
// no data segments: instantiating it never writes a byte of the memory it is given.

export { bitmap_mark, bitmap_count, bitmap_scan, bitmap_scan_clear } from "./bitmap";
export { pages_compare, pages_compare_copy } from "./compare";
export { pages_zero } from "./zero";
export { pages_gather } from "./gather";
export { frame_encode, frame_decode } from "./frame";
export { delta_encode, delta_decode } from "./delta";
export { blkif_parse } from "./blkif";
