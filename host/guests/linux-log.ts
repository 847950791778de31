/**
 * What the Linux guest's released output says (guest/linux/init.sh prints it): `heartbeat N`
 * once a second and `file N SHA256` once /data/fN is durable, each series numbered from 1. The
 * outside world judges a failover from it: no number missing, none seen twice, and every file
 * whose checksum was released is on the standby's disk with that checksum (linux-disk-check.ts).
 * Output is a byte stream cut at checkpoints, so lines are re-joined first.
 */

/** Gaps and duplicates in one numbered series. */
export interface SeriesVerdict {
  /** How many numbers there were. */
  count: number;
  /** The last number, or 0. */
  last: number;
  /** Numbers missing between 1 and the last. */
  gaps: number;
  /** Numbers seen more than once (or out of order). */
  duplicates: number;
}

/** Reads the guest's released output, in order. */
export class LinuxLog {
  /** Heartbeat numbers, as seen. */
  readonly heartbeats: number[] = [];
  /** File numbers, as seen. */
  readonly fileNumbers: number[] = [];
  /** Each file's released checksum, by number. */
  readonly files = new Map<number, string>();
  /** Lines that are neither, such as kernel messages. */
  readonly other: string[] = [];
  #partial = "";

  /** Reads the next output. */
  see(text: string): void {
    const lines = (this.#partial + text).split("\n");
    this.#partial = lines.pop()!;
    for (const raw of lines) {
      const line = raw.replace(/\r$/, "");
      const beat = /^heartbeat (\d+)$/.exec(line);
      const file = /^file (\d+) ([0-9a-f]{64})$/.exec(line);
      if (beat) {
        this.heartbeats.push(Number(beat[1]));
      } else if (file) {
        const n = Number(file[1]);
        this.fileNumbers.push(n);
        this.files.set(n, file[2]);
      } else if (line !== "") {
        this.other.push(line);
      }
    }
  }

  /** The heartbeat series' verdict. */
  heartbeatVerdict(): SeriesVerdict {
    return verdict(this.heartbeats);
  }

  /** The file series' verdict. */
  fileVerdict(): SeriesVerdict {
    return verdict(this.fileNumbers);
  }
}

/** Counts numbers missing from 1..last and numbers that do not follow their predecessor. */
function verdict(series: readonly number[]): SeriesVerdict {
  let gaps = 0;
  let duplicates = 0;
  let expected = 1;
  for (const n of series) {
    if (n < expected) duplicates++;
    else {
      gaps += n - expected;
      expected = n + 1;
    }
  }
  return { count: series.length, last: expected - 1, gaps, duplicates };
}
