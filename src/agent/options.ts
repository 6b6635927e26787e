import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { createLogger, type Logger } from '../lib/log.ts';
import { toHandler } from './builtin/index.ts';
import { describe, dnsLabel, integer, isRecord, nonEmptyString } from './check.ts';
import { AgentConfigError } from './errors.ts';
import type { Handler, HandlerSpec } from './types.ts';

/** Where the operator mounts an agent pod's projected ServiceAccount token (audience agentflow). */
/**
 * Back-off between the agent's attempts to open its stream. Capped low: after
 * a leader failover the agent must be back well within its lease TTL (10 s by
 * default), or its claims go with its lease and its finished results are
 * refused (their tasks run again). One attempt a second per agent at most.
 */
export const DEFAULT_RECONNECT = { initialMs: 200, maxMs: 1_000 } as const;

export const DEFAULT_TOKEN_FILE = '/var/run/secrets/agentflow/token';
/** Where the operator mounts the dispatcher's CA bundle (ConfigMap agentflow-dispatcher-ca). */
export const DEFAULT_CA_FILE = '/var/run/secrets/agentflow/ca/ca.crt';

export interface AgentOptions {
  /** The dispatcher's gRPC address, "host:port" (TLS; the certificate must name the host). */
  dispatcher: string;
  /**
   * The bearer token the agent proves itself with: a ServiceAccount token with
   * audience "agentflow". A file path (re-read as the kubelet rotates it) or a
   * function. Default DEFAULT_TOKEN_FILE.
   */
  token?: string | (() => string | Promise<string>);
  /** The dispatcher's CA bundle: PEM, or a file path (re-read on every connect). Default DEFAULT_CA_FILE. */
  ca?: Buffer | string;
  /** The name the dispatcher's certificate must carry, when it differs from the dispatcher address's host. */
  serverName?: string;
  /**
   * Plaintext gRPC, for a dispatcher started with insecure credentials on
   * purpose (the benchmark's baseline, unit tests). Never set by the
   * agentflow-agent command.
   */
  insecurePlaintext?: boolean;
  /** How often the token (and CA) file is checked for a rotation, in ms (default 10000). */
  credentialCheckMs?: number;
  /** For an agent in a pool's pod these come from the pod; an agent outside the cluster names them. */
  namespace?: string;
  pool?: string;
  /** Task slots: the dispatcher never assigns more cost than this at once. */
  capacity: number;
  handlers: Record<string, Handler | HandlerSpec>;
  /** Default `${pod}-${6 random hex}`. */
  agentId?: string;
  /** Default env POD_NAME, else the host name. */
  pod?: string;
  /** Default 5000. */
  heartbeatMs?: number;
  /** How long a drain waits for in-flight attempts when nobody says (default 25000, inside Kubernetes' 30 s grace). */
  drainTimeoutMs?: number;
  /** Reconnect back-off bounds (default DEFAULT_RECONNECT: 200 / 1000 ms). */
  reconnect?: { initialMs: number; maxMs: number };
  /** SIGTERM and SIGINT drain the agent (default false). */
  installSignalHandlers?: boolean;
  /**
   * After IDLE_RELEASE_AFTER_MS without a task starting or finishing, run one memory-reducing GC so the heap a
   * burst of tasks grew goes back to the OS (default true; see src/lib/idle-memory.ts). Off for a process whose
   * other work should never see that pause (~25 ms; skipped above IDLE_RELEASE_MAX_HEAP_BYTES of live heap).
   */
  releaseMemoryWhenIdle?: boolean;
  logger?: Logger;
}

export interface ResolvedOptions {
  dispatcher: string;
  token: string | (() => string | Promise<string>);
  ca: Buffer | string;
  serverName: string | undefined;
  insecurePlaintext: boolean;
  credentialCheckMs: number;
  namespace: string;
  pool: string;
  capacity: number;
  handlers: ReadonlyMap<string, Handler>;
  agentId: string;
  pod: string;
  heartbeatMs: number;
  drainTimeoutMs: number;
  reconnect: { initialMs: number; maxMs: number };
  installSignalHandlers: boolean;
  logger: Logger;
}

/** The dispatcher's Register limits, checked here so a bad option fails at start, not on the wire. */
export const MAX_CAPACITY = 1024;
export const MAX_HANDLERS = 128;

const F = 'AgentOptions';
const KNOWN = [
  'dispatcher',
  'token',
  'ca',
  'serverName',
  'insecurePlaintext',
  'credentialCheckMs',
  'namespace',
  'pool',
  'capacity',
  'handlers',
  'agentId',
  'pod',
  'heartbeatMs',
  'drainTimeoutMs',
  'reconnect',
  'installSignalHandlers',
  'releaseMemoryWhenIdle',
  'logger',
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
  const token = opts.token ?? DEFAULT_TOKEN_FILE;
  if (typeof token !== 'function' && (typeof token !== 'string' || token.trim() === '')) {
    throw new AgentConfigError(`${F}.token`, `must be a token file path or a function, got ${describe(opts.token)}`);
  }
  const ca = opts.ca ?? DEFAULT_CA_FILE;
  if (!Buffer.isBuffer(ca) && (typeof ca !== 'string' || ca.trim() === '')) {
    throw new AgentConfigError(`${F}.ca`, `must be PEM bytes or a CA file path, got ${describe(opts.ca)}`);
  }
  if (
    opts.serverName !== undefined &&
    (typeof opts.serverName !== 'string' || !/^[A-Za-z0-9.:-]{1,253}$/.test(opts.serverName))
  ) {
    throw new AgentConfigError(`${F}.serverName`, `must be a host name, got ${describe(opts.serverName)}`);
  }
  if (opts.insecurePlaintext !== undefined && typeof opts.insecurePlaintext !== 'boolean') {
    throw new AgentConfigError(`${F}.insecurePlaintext`, `must be a boolean, got ${describe(opts.insecurePlaintext)}`);
  }
  const credentialCheckMs = integer(`${F}.credentialCheckMs`, opts.credentialCheckMs ?? 10_000, 50);
  // Empty: the dispatcher takes them from the pod the token is bound to.
  const namespace =
    opts.namespace === undefined || opts.namespace === '' ? '' : dnsLabel(`${F}.namespace`, opts.namespace);
  const pool = opts.pool === undefined || opts.pool === '' ? '' : dnsLabel(`${F}.pool`, opts.pool);
  const capacity = integer(`${F}.capacity`, opts.capacity, 1, MAX_CAPACITY);
  const handlers = resolveHandlers(opts.handlers);
  const pod = opts.pod ?? process.env.POD_NAME ?? hostname();
  nonEmptyString(`${F}.pod`, pod);
  // The dispatcher derives the id from the verified identity; this suffix only tells apart agents of one
  // ServiceAccount outside the cluster, so keep it within the dispatcher's rule (lowercase, digits, "-").
  const agentId =
    opts.agentId ??
    `${
      pod
        .toLowerCase()
        .replace(/[^a-z0-9-]+/g, '-')
        .replace(/^-+|-+$/g, '')
        .slice(0, 25) || 'agent'
    }-${randomBytes(3).toString('hex')}`;
  // The agent id is an etcd key segment and a wire id: no "/".
  if (typeof agentId !== 'string' || agentId === '' || agentId.length > 253 || agentId.includes('/')) {
    throw new AgentConfigError(`${F}.agentId`, `must be 1-253 characters without "/", got ${describe(agentId)}`);
  }
  const heartbeatMs = integer(`${F}.heartbeatMs`, opts.heartbeatMs ?? 5_000, 1);
  const drainTimeoutMs = integer(`${F}.drainTimeoutMs`, opts.drainTimeoutMs ?? 25_000, 0);
  const reconnect = opts.reconnect ?? DEFAULT_RECONNECT;
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
  if (opts.releaseMemoryWhenIdle !== undefined && typeof opts.releaseMemoryWhenIdle !== 'boolean') {
    throw new AgentConfigError(
      `${F}.releaseMemoryWhenIdle`,
      `must be a boolean, got ${describe(opts.releaseMemoryWhenIdle)}`,
    );
  }
  return {
    dispatcher: opts.dispatcher,
    token,
    ca,
    serverName: opts.serverName,
    insecurePlaintext: opts.insecurePlaintext ?? false,
    credentialCheckMs,
    namespace,
    pool,
    capacity,
    handlers,
    agentId,
    pod,
    heartbeatMs,
    drainTimeoutMs,
    reconnect: { initialMs: reconnect.initialMs, maxMs: reconnect.maxMs },
    installSignalHandlers: opts.installSignalHandlers ?? false,
    logger: opts.logger ?? createLogger({ component: 'agent' }),
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
