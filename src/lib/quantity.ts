/**
 * Kubernetes resource.Quantity, parsed exactly into milli-units (bigint).
 *
 * Grammar (k8s.io/apimachinery/pkg/api/resource):
 *   <quantity>     ::= <sign>? <number> <suffix>
 *   <number>       ::= <digits> | <digits>.<digits>? | .<digits>
 *   <suffix>       ::= <binarySI> | <decimalSI> | ("e" | "E") <sign>? <digits>
 *   <binarySI>     ::= Ki | Mi | Gi | Ti | Pi | Ei
 *   <decimalSI>    ::= n | u | m | "" | k | M | G | T | P | E
 *
 * Milli-units keep cpu ("500m") exact; bigint keeps "8Ei" exact where a
 * number (or Kubernetes' int64) would not. A fraction below one milli-unit is
 * rounded up, away from zero, like Quantity.MilliValue(): "1n" is 1 milli-unit.
 * Unlike Kubernetes, values above 2^63-1 are not capped.
 */

export class QuantityError extends Error {
  /** The rejected input, as given. */
  readonly input: string;

  constructor(input: string, why: string) {
    super(`invalid quantity ${JSON.stringify(input)}: ${why}`);
    this.name = 'QuantityError';
    this.input = input;
  }
}

// Maps, not object literals: `"constructor" in {}` is true.
const DECIMAL_SUFFIXES: ReadonlyMap<string, number> = new Map([
  ['n', -9],
  ['u', -6],
  ['m', -3],
  ['k', 3],
  ['M', 6],
  ['G', 9],
  ['T', 12],
  ['P', 15],
  ['E', 18],
]);

const BINARY_SUFFIXES: ReadonlyMap<string, bigint> = new Map([
  ['Ki', 1n << 10n],
  ['Mi', 1n << 20n],
  ['Gi', 1n << 30n],
  ['Ti', 1n << 40n],
  ['Pi', 1n << 50n],
  ['Ei', 1n << 60n],
]);

const NUMBER = /^([+-]?)(\d+(?:\.\d*)?|\.\d+)(.*)$/s;
const EXPONENT = /^[eE]([+-]?\d+)$/;
/** Beyond 10^300 a "quantity" is a typo or an attack, and 10n ** huge would hang. */
const MAX_POWER_OF_TEN = 300;

/** Parses a Kubernetes quantity into milli-units, exactly; throws QuantityError. */
export function parseQuantity(s: string | number): bigint {
  let text: string;
  if (typeof s === 'number') {
    if (!Number.isFinite(s)) throw new QuantityError(String(s), 'not a finite number');
    text = String(s); // may be "1e+21" or "1e-7", both valid quantity syntax
  } else {
    text = s;
  }
  if (text === '') throw new QuantityError(text, 'empty string');
  if (/\s/.test(text)) throw new QuantityError(text, 'must not contain whitespace');

  const m = NUMBER.exec(text);
  if (!m) throw new QuantityError(text, 'expected an optionally signed decimal number, e.g. "500m", "1.5Gi", "2"');
  const negative = m[1] === '-';
  const num = m[2] ?? '';
  const suffix = m[3] ?? '';

  const dot = num.indexOf('.');
  const intPart = dot < 0 ? num : num.slice(0, dot);
  const fracPart = dot < 0 ? '' : num.slice(dot + 1);
  const mantissa = BigInt(`${intPart}${fracPart}` || '0');

  // value = mantissa * multiplier * 10^power; start with milli-units (10^3).
  let power = 3 - fracPart.length;
  let multiplier = 1n;
  const binary = BINARY_SUFFIXES.get(suffix);
  const decimalPower = DECIMAL_SUFFIXES.get(suffix);
  if (suffix === '') {
    // plain number
  } else if (binary !== undefined) {
    multiplier = binary;
  } else if (decimalPower !== undefined) {
    power += decimalPower;
  } else {
    const e = EXPONENT.exec(suffix);
    if (!e) {
      throw new QuantityError(
        text,
        `unknown suffix ${JSON.stringify(suffix)} (expected one of n u m k M G T P E Ki Mi Gi Ti Pi Ei, or an integer exponent like e3)`,
      );
    }
    const exp = BigInt(e[1] ?? '0');
    if (mantissa === 0n) return 0n;
    if (exp > BigInt(MAX_POWER_OF_TEN)) throw new QuantityError(text, 'exponent out of range');
    if (exp < -BigInt(MAX_POWER_OF_TEN)) {
      // Far below one milli-unit: rounds up to one.
      return negative ? -1n : 1n;
    }
    power += Number(exp);
  }

  if (power > MAX_POWER_OF_TEN) throw new QuantityError(text, 'out of range');
  let magnitude: bigint;
  const scaled = mantissa * multiplier;
  if (power >= 0) {
    magnitude = scaled * 10n ** BigInt(power);
  } else {
    const divisor = 10n ** BigInt(-power);
    magnitude = scaled / divisor + (scaled % divisor === 0n ? 0n : 1n);
  }
  return negative ? -magnitude : magnitude;
}

export type QuantityKind = 'cpu' | 'memory' | 'count';

const BINARY_UNITS: ReadonlyArray<readonly [string, bigint]> = [
  ['Ei', 1n << 60n],
  ['Pi', 1n << 50n],
  ['Ti', 1n << 40n],
  ['Gi', 1n << 30n],
  ['Mi', 1n << 20n],
  ['Ki', 1n << 10n],
];

/**
 * Formats milli-units for people (event and condition messages), not for the API:
 * cpu as "1500m" or "2"; memory in the largest binary unit not above it, exact
 * ("512Mi") or with one decimal, truncated so free room is never overstated
 * ("1.5Gi"), plain bytes below 1Ki ("100"); counts as plain numbers ("3", "1.5").
 */
export function formatQuantity(milli: bigint, kind: QuantityKind): string {
  if (milli < 0n) return `-${formatQuantity(-milli, kind)}`;
  switch (kind) {
    case 'cpu':
      return milli % 1000n === 0n ? `${milli / 1000n}` : `${milli}m`;
    case 'count':
      return decimal(milli);
    case 'memory': {
      if (milli < 1024n * 1000n) return milli % 1000n === 0n ? `${milli / 1000n}` : `${milli}m`;
      const bytes = milli / 1000n;
      for (const [unit, size] of BINARY_UNITS) {
        if (bytes < size) continue;
        if (bytes % size === 0n) return `${bytes / size}${unit}`;
        const tenths = (bytes * 10n) / size;
        return `${tenths / 10n}.${tenths % 10n}${unit}`;
      }
      return `${bytes}`;
    }
  }
}

/** Exact decimal rendering of a non-negative milli amount: 1500n -> "1.5". */
function decimal(milli: bigint): string {
  const whole = milli / 1000n;
  const frac = milli % 1000n;
  if (frac === 0n) return `${whole}`;
  return `${whole}.${frac.toString().padStart(3, '0').replace(/0+$/, '')}`;
}
