/**
 * Timing for benches on a shared, noisy machine: warm up first (V8 compiles Wasm with
 * Liftoff and tiers up to TurboFan lazily), then take the median of many samples, and
 * interleave the contenders so drift in machine load hits all of them alike.
 */

/** A contender: `setup` runs untimed before each sample; `run` is timed. */
export interface Contender {
  name: string;
  setup?: () => void;
  run: () => void;
}

/** Options of {@link race}. */
export interface RaceOptions {
  /** Untimed rounds before sampling. */
  warmup: number;
  /** Timed rounds; each contender is sampled once per round, in rotating order. */
  rounds: number;
  /** Called before each round, for progress. */
  onRound?: (round: number) => void;
}

/** Median milliseconds per `run` of each contender, by name. */
export function race(contenders: readonly Contender[], options: RaceOptions): Record<string, number> {
  const samples = new Map<string, number[]>(contenders.map((c) => [c.name, []]));
  for (let round = 0; round < options.warmup + options.rounds; round++) {
    options.onRound?.(round);
    for (let k = 0; k < contenders.length; k++) {
      const c = contenders[(round + k) % contenders.length];
      c.setup?.();
      const start = performance.now();
      c.run();
      const elapsed = performance.now() - start;
      if (round >= options.warmup) samples.get(c.name)!.push(elapsed);
    }
  }
  return Object.fromEntries([...samples].map(([name, times]) => [name, median(times)]));
}

/** The median of `values` (which it sorts). */
export function median(values: number[]): number {
  values.sort((a, b) => a - b);
  const mid = values.length >> 1;
  return values.length % 2 === 1 ? values[mid] : (values[mid - 1] + values[mid]) / 2;
}
