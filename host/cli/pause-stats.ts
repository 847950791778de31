/** The figures the demos print about their checkpoint pauses. */

/** The `p` quantile (0 to 1) of `values` by the nearest rank below; 0 for none. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}

/** `n` to two decimals, for a summary. */
export function round(n: number): number {
  return Math.round(n * 100) / 100;
}
