import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { createLogger, type Logger } from '../lib/log.ts';
import { toHandler } from './builtin/index.ts';
import { describe, dnsLabel, integer, isRecord, nonEmptyString } from './check.ts';
import type { Coordination } from './coordination.ts';
import { AgentConfigError } from './errors.ts';
import type { Handler, HandlerSpec } from './types.ts';

export interface AgentOptions {
  /** The dispatcher's gRPC address, "host:port". */
  dispatcher: string;
  /** etcd client URLs; required unless `coordination` is given. */
  etcd?: string[];
  /** Root of agentflow's etcd keys (default /agentflow/v1). */
  etcdPrefix?: string;
  /** TLS to etcd (https endpoints): its CA, and a client certificate if it asks for one. */
  etcdTls?: { ca: Buffer; cert?: Buffer; key?: Buffer };
  namespace: string;
  pool: string;
  /** Task slots: the dispatcher never assigns more cost than this at once. */
  capacity: number;
  handlers: Record<string, Handler | HandlerSpec>;
  /** Default `${pod}-${6 random hex}`. */
  agentId?: string;
  /** Default env POD_NAME, else the host name. */
  pod?: string;
  /** The etcd lease's TTL: how long a dead agent keeps its tasks (default 10). */
  leaseTtlSeconds?: number;
  /** Default 5000. */
  heartbeatMs?: number;
  /** How long a drain waits for in-flight attempts when nobody says (default 25000, inside Kubernetes' 30 s grace). */
  drainTimeoutMs?: number;
  /** Reconnect back-off bounds (default 200 / 5000 ms). */
  reconnect?: { initialMs: number; maxMs: number };
  /** SIGTERM and SIGINT drain the agent (default false). */
  installSignalHandlers?: boolean;
  logger?: Logger;
  /** Replaces etcd, for tests and embedders; `etcd` and `etcdPrefix` are then unused. */
  coordination?: Coordination;
}

export interface ResolvedOptions {
  dispatcher: string;
  etcd: string[];
  etcdPrefix: string | undefined;
  etcdTls: { ca: Buffer; cert?: Buffer; key?: Buffer } | undefined;
  namespace: string;
  pool: string;
  capacity: number;
  handlers: ReadonlyMap<string, Handler>;
  agentId: string;
  pod: string;
  leaseTtlSeconds: number;
  heartbeatMs: number;
  drainTimeoutMs: number;
  reconnect: { initialMs: number; maxMs: number };
  installSignalHandlers: boolean;
  logger: Logger;
  coordination: Coordination | undefined;
}

/** The dispatcher's Register limits, checked here so a bad option fails at start, not on the wire. */
export const MAX_CAPACITY = 1024;
export const MAX_HANDLERS = 128;

const F = 'AgentOptions';
const KNOWN = [
  'dispatcher',
  'etcd',
  'etcdPrefix',
  'etcdTls',
  'namespace',
  'pool',
  'capacity',
  'handlers',
  'agentId',
  'pod',
  'leaseTtlSeconds',
  'heartbeatMs',
  'drainTimeoutMs',
  'reconnect',
  'installSignalHandlers',
  'logger',
  'coordination',
];

// host:port, [v6]:port, or a gRPC target URI (dns:///..., unix:...).
const ADDRESS = /^(([^\s:/[\]]+|\[[0-9a-fA-F:.]+\]):\d{1,5}|(dns|unix|unix-abstract|ipv4|ipv6):\S+)$/;

export function resolveOptions(opts: AgentOptions): ResolvedOptions {
  if (!isRecord(opts)) throw new AgentConfigError(F, `must be an object, got ${describe(opts)}`);
  for (const k of Object.keys(opts)) {
    if (!KNOWN.includes(k)) throw new AgentConfigError(`${F}.${k}`, 'unknown option');
  }
  if (typeof opts.dispatcher !== 'string' || !ADDRESS.test(opts.dispatcher)) {
    throw new AgentConfigError(`${F}.dispatcher`, `must be "host:port", got ${describe(opts.dispatcher)}`);
  }
  const coordination = opts.coordination;
  const etcd = opts.etcd ?? [];
  if (!Array.isArray(etcd) || !etcd.every((e) => typeof e === 'string' && e.trim() !== '' && !/\s/.test(e))) {
    throw new AgentConfigError(`${F}.etcd`, `must be a list of endpoint URLs, got ${describe(opts.etcd)}`);
  }
  if (coordination === undefined && etcd.length === 0) {
    throw new AgentConfigError(`${F}.etcd`, 'at least one etcd endpoint is required');
  }
  if (opts.etcdPrefix !== undefined && !/^\/\S*$/.test(opts.etcdPrefix)) {
    throw new AgentConfigError(`${F}.etcdPrefix`, `must start with "/", got ${describe(opts.etcdPrefix)}`);
  }
  const namespace = dnsLabel(`${F}.namespace`, opts.namespace);
  const pool = dnsLabel(`${F}.pool`, opts.pool);
  const capacity = integer(`${F}.capacity`, opts.capacity, 1, MAX_CAPACITY);
  const handlers = resolveHandlers(opts.handlers);
  const pod = opts.pod ?? process.env.POD_NAME ?? hostname();
  nonEmptyString(`${F}.pod`, pod);
  const agentId = opts.agentId ?? `${pod}-${randomBytes(3).toString('hex')}`;
  // The agent id is an etcd key segment and a wire id: no "/".
  if (typeof agentId !== 'string' || agentId === '' || agentId.length > 253 || agentId.includes('/')) {
    throw new AgentConfigError(`${F}.agentId`, `must be 1-253 characters without "/", got ${describe(agentId)}`);
  }
  // etcd's minimum TTL is about 2 s with default election settings.
  const leaseTtlSeconds = integer(`${F}.leaseTtlSeconds`, opts.leaseTtlSeconds ?? 10, 2);
  const heartbeatMs = integer(`${F}.heartbeatMs`, opts.heartbeatMs ?? 5_000, 1);
  const drainTimeoutMs = integer(`${F}.drainTimeoutMs`, opts.drainTimeoutMs ?? 25_000, 0);
  const reconnect = opts.reconnect ?? { initialMs: 200, maxMs: 5_000 };
  if (!isRecord(reconnect))
    throw new AgentConfigError(`${F}.reconnect`, `must be {initialMs, maxMs}, got ${describe(reconnect)}`);
  integer(`${F}.reconnect.initialMs`, reconnect.initialMs, 1);
  integer(`${F}.reconnect.maxMs`, reconnect.maxMs, reconnect.initialMs);
  if (opts.installSignalHandlers !== undefined && typeof opts.installSignalHandlers !== 'boolean') {
    throw new AgentConfigError(
      `${F}.installSignalHandlers`,
      `must be a boolean, got ${describe(opts.installSignalHandlers)}`,
    );
  }
  return {
    dispatcher: opts.dispatcher,
    etcd,
    etcdPrefix: opts.etcdPrefix,
    etcdTls: opts.etcdTls,
    namespace,
    pool,
    capacity,
    handlers,
    agentId,
    pod,
    leaseTtlSeconds,
    heartbeatMs,
    drainTimeoutMs,
    reconnect: { initialMs: reconnect.initialMs, maxMs: reconnect.maxMs },
    installSignalHandlers: opts.installSignalHandlers ?? false,
    logger: opts.logger ?? createLogger({ component: 'agent' }),
    coordination,
  };
}

function resolveHandlers(v: unknown): Map<string, Handler> {
  const field = `${F}.handlers`;
  if (!isRecord(v))
    throw new AgentConfigError(field, `must be a map of handler name to function or spec, got ${describe(v)}`);
  const names = Object.keys(v);
  if (names.length === 0 || names.length > MAX_HANDLERS) {
    throw new AgentConfigError(field, `1-${MAX_HANDLERS} handlers are required, got ${names.length}`);
  }
  const out = new Map<string, Handler>();
  for (const name of names) {
    if (name.trim() === '' || name.length > 253) {
      throw new AgentConfigError(`${field}.${name}`, 'a handler name must be 1-253 characters');
    }
    out.set(name, toHandler(`${field}.${name}`, v[name]));
  }
  return out;
}
