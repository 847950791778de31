/** Error-code checks shared by the tests. */

import { TandemError } from "../../host/errors.ts";

/**
 * The code of the TandemError `fn` throws; undefined if it returns; a description if it
 * throws something else (so an assertion on the code fails with a useful message).
 */
export function errorCode(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (error) {
    return error instanceof TandemError ? error.code : `not a TandemError: ${String(error)}`;
  }
  return undefined;
}

/** The TandemError `fn` throws (fails the test if it throws nothing or something else). */
export function failure(fn: () => unknown): TandemError {
  try {
    fn();
  } catch (error) {
    if (error instanceof TandemError) return error;
    throw error;
  }
  throw new Error("expected a TandemError");
}
