// Rules for shared-state values that the operator and agents share. No etcd client here: the agent
// SDK imports this, and agents never load etcd code.

export type JsonValue = string | number | boolean | null | JsonValue[] | { [k: string]: JsonValue };

/** etcd refuses requests over 1.5 MiB by default; a clear error beats its gRPC one. */
export const MAX_VALUE_BYTES = 1024 * 1024;

/** A shared-state value as stored: JSON of at most MAX_VALUE_BYTES (the one rule agents and the operator share). */
export function encodeStateValue(key: string, value: JsonValue): string {
  const text = JSON.stringify(value);
  if (text === undefined) throw new TypeError(`value for "${key}" is not JSON-serialisable`);
  const bytes = Buffer.byteLength(text);
  if (bytes > MAX_VALUE_BYTES) {
    throw new RangeError(`value for "${key}" is ${bytes} bytes of JSON; the limit is ${MAX_VALUE_BYTES}`);
  }
  return text;
}
