/** Loads a cow image's block-state bitmap, refusing states no writer sets unless asked not to. */

import { ErrorCode, TandemError } from "../../errors.ts";
import { readExact, type BlockFile } from "../block-file.ts";
import { BlockStates } from "./block-states.ts";
import { blockCount, type CowHeader } from "./cow-header.ts";

/** The bitmap of the image `header` describes (its bounds validated by the header parse). */
export function readBlockStates(file: BlockFile, header: CowHeader, options: { allowReserved?: boolean } = {}): BlockStates {
  const bytes = new Uint8Array(header.bitmapLength);
  readExact(file, header.bitmapOffset, bytes, "the cow bitmap");
  const states = new BlockStates(bytes, blockCount(header.virtualSize, header.blockBits));
  if (options.allowReserved !== true) {
    const bad = states.firstReserved();
    if (bad !== -1) {
      throw new TandemError(ErrorCode.DiskFormat, `${file.path}: block ${bad} has the reserved state 3 in the bitmap; run 'tandem img check -r' on it`);
    }
  }
  return states;
}
