/**
 * A subcommand's options as a table: each option's name, value, default, help and validation in
 * one place. From the table come both the parser and the subcommand's `--help`, so the help
 * lists exactly what the parser takes, with the defaults it uses. Unknown options, missing
 * values and bad values are E_BAD_ARGUMENT errors that name the option; the dispatcher
 * (commands.ts) turns them into a usage message and exit status 2.
 *
 * Syntax, as getopt_long's: `--name VALUE`, `--name=VALUE`, `-x VALUE`, `-xVALUE`, flags
 * without a value, `--` ends the options. An option that takes a value always takes the next
 * argument, so `--interval -5` reads "-5" (and rejects it) rather than calling it an option.
 */

import { ErrorCode, TandemError } from "../errors.ts";
import type { Output } from "./output.ts";

/** One option: how its value is read and checked, what it is when absent, and its help. */
export interface Option<T> {
  /** The value's name in help ("MS", "ADDR"); absent for a flag, which takes no value. */
  readonly value?: string;
  /** What the option does (lines after the first are indented under it in help). */
  readonly help: string;
  /** The value when the option is not given. */
  readonly initial: T;
  /** The default as help shows it; absent: none shown. */
  readonly shown?: string;
  /** A one-letter alias, as in `-f`. */
  readonly short?: string;
  /** The option must be given. */
  readonly required?: boolean;
  /**
   * The value after `text` is given (`previous`: what it held, for options that may repeat);
   * a bad `text` throws {@link rejectValue}'s error.
   */
  read(text: string, previous: T): T;
}

/** A subcommand's options by long name (without the dashes). */
export type OptionTable = Readonly<Record<string, Option<unknown>>>;

/** What a parse yields for a table: each option's value. */
export type OptionValues<O extends OptionTable> = { -readonly [K in keyof O]: O[K] extends Option<infer T> ? T : never };

/** A subcommand: its name, operands, summary and option table. */
export interface CommandSpec<O extends OptionTable = OptionTable> {
  /** As typed after `tandem`: "primary", "img create". */
  readonly name: string;
  /** The operands as usage shows them ("FILE", "FILE [SIZE]"); absent: none taken. */
  readonly operands?: string;
  /** How many operands it takes (default: none). */
  readonly minOperands?: number;
  readonly maxOperands?: number;
  /** What the subcommand does, a line or a few. */
  readonly summary: string;
  readonly options: O;
}

/** A parsed command line. */
export interface Parsed<O extends OptionTable> {
  values: OptionValues<O>;
  operands: string[];
}

/** A subcommand ready to run: its spec (for help) and how it runs. */
export interface Command {
  readonly spec: CommandSpec;
  /** Parses `args` and runs; `--help` prints the help and returns 0. Usage errors throw E_BAD_ARGUMENT. */
  run(args: readonly string[], io: Output): number | Promise<number>;
}

/** A {@link Command} from its spec and what it does with the parsed arguments. */
export function defineCommand<O extends OptionTable>(spec: CommandSpec<O>, action: (parsed: Parsed<O>, io: Output) => number | Promise<number>): Command {
  return {
    spec,
    run(args, io) {
      const parsed = parseOptions(spec, args);
      if (parsed === "help") {
        io.out(helpText(spec));
        return 0;
      }
      return action(parsed, io);
    },
  };
}

/** Throws the error an {@link Option.read} raises for a bad value; `reason` says what is expected. */
export function rejectValue(reason: string): never {
  throw new TandemError(ErrorCode.BadArgument, reason);
}

/**
 * Parses `args` against `spec`; "help" if `--help` or `-h` was given. Throws E_BAD_ARGUMENT for
 * an unknown option, a missing or bad value, a missing required option, or operands too few or
 * too many.
 */
export function parseOptions<O extends OptionTable>(spec: CommandSpec<O>, args: readonly string[]): Parsed<O> | "help" {
  const end = args.indexOf("--");
  // Help wins over every error, wherever it stands among the options.
  if ((end < 0 ? args : args.slice(0, end)).some((arg) => arg === "--help" || arg === "-h")) return "help";
  const fail = (message: string): never => {
    throw new TandemError(ErrorCode.BadArgument, `${spec.name}: ${message}`);
  };
  const values: Record<string, unknown> = {};
  for (const [name, option] of Object.entries(spec.options)) values[name] = option.initial;
  const seen = new Set<string>();
  const operands: string[] = [];
  const byShort = new Map(Object.entries(spec.options).filter(([, o]) => o.short !== undefined).map(([name, o]) => [o.short!, name]));

  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--") {
      operands.push(...args.slice(i + 1));
      break;
    }
    let name: string | undefined;
    let inline: string | undefined;
    if (arg.startsWith("--")) {
      const equals = arg.indexOf("=");
      name = equals < 0 ? arg.slice(2) : arg.slice(2, equals);
      inline = equals < 0 ? undefined : arg.slice(equals + 1);
      if (!Object.hasOwn(spec.options, name)) fail(`unknown option '--${name}'`);
    } else if (arg.startsWith("-") && arg.length > 1) {
      name = byShort.get(arg[1]);
      if (name === undefined) fail(`unknown option '${arg.slice(0, 2)}'`);
      inline = arg.length > 2 ? arg.slice(2) : undefined;
    } else {
      operands.push(arg);
      continue;
    }
    const option = spec.options[name!];
    const shownName = arg.startsWith("--") ? `--${name}` : `-${option.short}`;
    seen.add(name!);
    if (option.value === undefined) {
      if (inline !== undefined) fail(`${shownName} takes no value`);
      values[name!] = option.read("", values[name!]);
      continue;
    }
    const given = inline ?? args[++i];
    if (given === undefined) fail(`${shownName} needs a value (${option.value})`);
    try {
      values[name!] = option.read(given!, values[name!]);
    } catch (error) {
      if (!(error instanceof TandemError) || error.code !== ErrorCode.BadArgument) throw error;
      fail(`${shownName} ${given}: ${error.message.slice(ErrorCode.BadArgument.length + 2)}`);
    }
  }

  for (const [name, option] of Object.entries(spec.options)) {
    if (option.required && !seen.has(name)) fail(`needs --${name} ${option.value}: ${firstLine(option.help)}`);
  }
  const min = spec.minOperands ?? 0;
  const max = spec.maxOperands ?? 0;
  if (operands.length < min) fail(`missing ${spec.operands ?? "operands"}; usage: ${usageLine(spec)}`);
  if (operands.length > max) fail(`unexpected '${operands.slice(max).join(" ")}'; usage: ${usageLine(spec)}`);
  return { values: values as OptionValues<O>, operands };
}

/** `tandem NAME --required VALUE ... [options] OPERANDS`. */
export function usageLine(spec: CommandSpec): string {
  const required = Object.entries(spec.options).filter(([, o]) => o.required).map(([name, o]) => `--${name} ${o.value}`);
  const optional = Object.values(spec.options).some((o) => !o.required) ? ["[options]"] : [];
  return ["tandem", spec.name, ...required, ...optional, ...(spec.operands ? [spec.operands] : [])].join(" ");
}

/** Help column where the descriptions start. */
const HELP_COLUMN = 26;

/** The subcommand's --help: usage, summary, and every option with its default. */
export function helpText(spec: CommandSpec): string {
  const lines = [`Usage: ${usageLine(spec)}`, "", ...spec.summary.split("\n"), "", "Options:"];
  const entries: [string, string][] = Object.entries(spec.options).map(([name, o]) => {
    const names = `${o.short ? `-${o.short}, ` : ""}--${name}${o.value ? ` ${o.value}` : ""}`;
    const note = o.required ? " (required)" : o.shown !== undefined ? ` (default: ${o.shown})` : "";
    return [names, `${o.help}${note}`];
  });
  entries.push(["-h, --help", "print this help"]);
  for (const [names, help] of entries) {
    const [first, ...more] = help.split("\n");
    const head = `  ${names}`;
    lines.push(head.length < HELP_COLUMN ? head.padEnd(HELP_COLUMN) + first : `${head}\n${" ".repeat(HELP_COLUMN)}${first}`);
    for (const line of more) lines.push(" ".repeat(HELP_COLUMN) + line);
  }
  return lines.join("\n");
}

function firstLine(text: string): string {
  return text.split("\n")[0];
}

/** Settings every value option may take. */
interface ValueSettings<D> {
  /** The value when the option is absent (and shown in help). */
  default?: D;
  /** The default as help shows it, where the command applies it itself (the value stays undefined). */
  shown?: string;
  short?: string;
}

/** The short alias and the default shown in help, as the settings give them. */
function common(settings: ValueSettings<unknown>): Pick<Option<unknown>, "short" | "shown"> {
  const shown = settings.shown ?? (settings.default === undefined ? undefined : String(settings.default));
  return { ...(settings.short ? { short: settings.short } : {}), ...(shown !== undefined ? { shown } : {}) };
}

/** `option`, which must now be given (so its value is never undefined). */
export function required<T>(option: Option<T | undefined>): Option<T> {
  return { ...option, required: true } as Option<T>;
}

/** A flag: true when given. */
export function flag(help: string, settings: { short?: string } = {}): Option<boolean> {
  return { help, initial: false, ...common(settings), read: () => true };
}

/** A string value (non-empty). */
export function text<D extends string | undefined = undefined>(value: string, help: string, settings: ValueSettings<D> = {}): Option<string | D> {
  return {
    value,
    help,
    initial: settings.default as D,
    ...common(settings),
    read: (given) => (given === "" ? rejectValue("an empty value") : given),
  };
}

/** A string that may be given more than once; the values in order. */
export function list(value: string, help: string, settings: { short?: string } = {}): Option<string[]> {
  return { value, help, initial: [], ...common(settings), read: (given, previous) => [...previous, given] };
}

/** One of `choices`. */
export function choice<C extends string, D extends C | undefined = undefined>(value: string, help: string, choices: readonly C[], settings: ValueSettings<D> = {}): Option<C | D> {
  return {
    value,
    help,
    initial: settings.default as D,
    ...common(settings),
    read: (given) => (choices.includes(given as C) ? (given as C) : rejectValue(`give ${choices.length > 1 ? `${choices.slice(0, -1).join(", ")} or ` : ""}${choices.at(-1)}`)),
  };
}

/** Bounds and kind of a number option. */
interface NumberSettings<D> extends ValueSettings<D> {
  /** Only whole numbers. */
  integer?: boolean;
  /** The least value allowed. */
  min?: number;
  /** Values must be above this (a positive duration: `above: 0`). */
  above?: number;
  /** The greatest value allowed. */
  max?: number;
  /** The unit, for the error message ("milliseconds"). */
  unit?: string;
}

/** A number in bounds. */
export function number<D extends number | undefined = undefined>(value: string, help: string, settings: NumberSettings<D> = {}): Option<number | D> {
  const { integer = false, min, above, max, unit } = settings;
  const bounds = [
    min !== undefined ? `at least ${min}` : above !== undefined ? `above ${above}` : "",
    max !== undefined ? `at most ${max}` : "",
  ].filter(Boolean).join(" and ");
  const expected = `${integer ? "a whole number" : "a number"}${unit ? ` of ${unit}` : ""}${bounds ? `, ${bounds}` : ""}`;
  return {
    value,
    help,
    initial: settings.default as D,
    ...common(settings),
    read(given) {
      // Number("") and Number(" ") are 0; only digits, a sign, a point and an exponent count.
      const n = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(given.trim()) ? Number(given) : NaN;
      const ok = Number.isFinite(n) && (!integer || Number.isSafeInteger(n)) && (min === undefined || n >= min) &&
        (above === undefined || n > above) && (max === undefined || n <= max);
      return ok ? n : rejectValue(`expected ${expected}`);
    },
  };
}

/** A value read by `parse`, which throws {@link rejectValue}'s error for a bad one. */
export function custom<T, D extends T | undefined = undefined>(value: string, help: string, parse: (given: string) => T, settings: ValueSettings<D> = {}): Option<T | D> {
  return {
    value,
    help,
    initial: settings.default as D,
    ...common(settings),
    read: (given) => parse(given),
  };
}
