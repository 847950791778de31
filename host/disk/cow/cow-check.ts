/**
 * `tandem img check` for cow images. The write order keeps an image consistent through any
 * crash, so what check finds is damage from outside: states no writer sets, blocks marked as
 * holding data that the file does not reach, bits set past the last block.
 */

import type { BlockFile } from "../block-file.ts";
import type { CheckReport } from "../format.ts";
import { BlockState } from "./cow-layout.ts";
import { parseCowHeader } from "./cow-header.ts";
import { readBlockStates } from "./read-block-states.ts";

/** Findings of one kind listed one by one before the rest are summed up. */
const LISTED_PER_KIND = 20;

/** Checks the cow image in `file`; with `repair`, fixes what can be fixed without guessing at data. */
export function checkCow(file: BlockFile, options: { repair: boolean }): CheckReport {
  const header = parseCowHeader(file);
  const states = readBlockStates(file, header, { allowReserved: true });
  const blockSize = 2 ** header.blockBits;
  const fileSize = file.size();
  const report: CheckReport = { format: "cow", errors: 0, leaks: 0, errorsFixed: 0, leaksFixed: 0, messages: [] };
  const repairing = options.repair ? "Repairing" : "ERROR";
  let reserved = 0;
  let pastEnd = 0;
  let neededFileSize = fileSize;
  let imageEnd = header.dataOffset;
  // Without a base, absent reads as zeros too, and frees the block's place.
  const zeroState = header.baseName === null ? BlockState.Absent : BlockState.Zero;

  states.forEachPresent((block, state) => {
    const start = block * blockSize;
    const dataEnd = header.dataOffset + Math.min(header.virtualSize, start + blockSize);
    if (state === BlockState.Reserved) {
      report.errors++;
      if (reserved++ < LISTED_PER_KIND) report.messages.push(`${repairing} block ${block}: reserved state 3 in the bitmap; it will read as zeros`);
      if (options.repair) {
        states.set(block, zeroState);
        report.errorsFixed++;
      }
    } else if (state === BlockState.Data) {
      imageEnd = Math.max(imageEnd, dataEnd);
      if (dataEnd > fileSize) {
        report.errors++;
        if (pastEnd++ < LISTED_PER_KIND) {
          report.messages.push(`${repairing} block ${block}: its data ends at ${dataEnd}, past the end of the ${fileSize}-byte file`);
        }
        if (options.repair) {
          // Extending the file keeps what the block reads (zeros past the end) and makes it real.
          neededFileSize = Math.max(neededFileSize, dataEnd);
          report.errorsFixed++;
        }
      }
    }
  });
  if (reserved > LISTED_PER_KIND) report.messages.push(`... and ${reserved - LISTED_PER_KIND} more blocks in the reserved state`);
  if (pastEnd > LISTED_PER_KIND) report.messages.push(`... and ${pastEnd - LISTED_PER_KIND} more blocks past the end of the file`);

  const tail = states.tailBitsSet();
  if (tail > 0) {
    report.leaks += tail;
    report.messages.push(`${options.repair ? "Repairing" : "Leaked"}: ${tail} bitmap states set past the last block ${states.count - 1}`);
    if (options.repair) {
      states.clearTail();
      report.leaksFixed += tail;
    }
  }

  if (options.repair) {
    if (neededFileSize > fileSize) {
      file.truncate(neededFileSize);
      file.sync();
    }
    if (states.dirty) {
      states.writeDirty(file, header.bitmapOffset);
      file.sync();
    }
  }
  report.imageEndOffset = imageEnd;
  return report;
}
