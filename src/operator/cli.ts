// agentflow-operator: what the operator Deployment runs. Exit codes: 0 after
// SIGTERM/SIGINT, 1 when leadership is lost or the operator fails (Kubernetes
// restarts it as a fresh candidate), 2 for bad flags.

import { hostname } from 'node:os';
import { parseArgs } from 'node:util';
import { DEFAULT_DATA_API_PORT, DEFAULT_DATA_API_SERVICE } from '../api/data-api.ts';
import { DEFAULT_MAX_FOREACH_ITEMS, DEFAULT_MAX_SPAWNED_CHILDREN } from '../api/workflow.ts';
import { ETCD_FLAG_OPTIONS, ETCD_FLAGS_USAGE, etcdConnection, flag, UsageError } from '../lib/etcd-flags.ts';
import { installFatalHandlers } from '../lib/fatal.ts';
import { createLogger, type Level } from '../lib/log.ts';
import { Registry } from '../lib/metrics.ts';
import { startTracing } from '../lib/tracing.ts';
import { VERSION_LINE } from '../lib/version.ts';
import { type KubeCredentials, KubeconfigError, resolveKubeCredentials } from './kube/credentials.ts';
import { Operator, type OperatorConfig } from './operator.ts';
import { DEFAULT_WAITING_TIMEOUT_SECONDS } from './workflow/controller.ts';

const USAGE = `Usage: agentflow-operator [flags]

Flags (each also read from the environment variable in brackets):
  --kubeconfig PATH               kubeconfig; default: in-cluster service account, else $KUBECONFIG / ~/.kube/config
${ETCD_FLAGS_USAGE}
  --watch-namespace NS[,NS...]    only these namespaces' pools and workflows (default: all)
                                                                                 [AGENTFLOW_WATCH_NAMESPACE]
  --ops-address HOST:PORT         /healthz, /readyz, /metrics (0.0.0.0:8080)   [AGENTFLOW_OPS_ADDRESS]
  --dispatcher-address HOST:PORT  where the leader's dispatcher listens (0.0.0.0:7070) [AGENTFLOW_DISPATCHER_ADDRESS]
  --agent-dispatcher HOST:PORT    what agent pods dial (required)              [AGENTFLOW_AGENT_DISPATCHER]
  --namespace NS                  the operator's own namespace (dispatcher TLS Secret) [POD_NAMESPACE] (default agentflow-system)
  --dispatcher-tls-mode MODE      managed (the operator keeps a CA and certificate in a Secret and rotates them)
                                  or secret (a Secret you or cert-manager keep: tls.crt, tls.key, ca.crt) (managed)
                                                                                 [AGENTFLOW_DISPATCHER_TLS_MODE]
  --dispatcher-tls-secret NAME    that Secret (agentflow-dispatcher-tls)        [AGENTFLOW_DISPATCHER_TLS_SECRET]
  --dispatcher-service NAME       the dispatcher Service; its DNS names go into the certificate (agentflow-dispatcher)
                                                                                 [AGENTFLOW_DISPATCHER_SERVICE]
  --dispatcher-tls-sans LIST      more DNS names / IPs for the certificate, comma-separated [AGENTFLOW_DISPATCHER_TLS_SANS]
  --dispatcher-ca-configmap NAME  ConfigMap with the CA bundle published in every pool namespace (agentflow-dispatcher-ca)
                                                                                 [AGENTFLOW_DISPATCHER_CA_CONFIGMAP]
  --data-api-address HOST:PORT    where the leader serves the data API (data.agentflow.io, reached through the API
                                  server's APIService; 0.0.0.0:8443; "off" serves none) [AGENTFLOW_DATA_API_ADDRESS]
  --data-api-service NAME         the Service the APIService points at; its DNS names go into the certificate
                                  (agentflow-api)                               [AGENTFLOW_DATA_API_SERVICE]
  --token-audience AUD            audience of agents' ServiceAccount tokens (agentflow) [AGENTFLOW_TOKEN_AUDIENCE]
  --agent-lease-ttl SECONDS       how long a silent agent keeps its tasks (10)  [AGENTFLOW_AGENT_LEASE_TTL]
  --election NAME                 leader election name (agentflow-operator)   [AGENTFLOW_ELECTION]
  --lease-ttl SECONDS             leader lease TTL (15)                         [AGENTFLOW_LEASE_TTL]
  --workers N                     concurrent reconciles per controller (2)     [AGENTFLOW_WORKERS]
  --max-foreach-items N           most items a workflow task's forEach may yield (${DEFAULT_MAX_FOREACH_ITEMS})
                                                                                 [AGENTFLOW_MAX_FOREACH_ITEMS]
  --max-spawned-children N        most children one workflow task may spawn, descendants included (${DEFAULT_MAX_SPAWNED_CHILDREN})
                                                                                 [AGENTFLOW_MAX_SPAWNED_CHILDREN]
  --waiting-timeout SECONDS       how long a workflow may wait for a missing AgentPool or for an
                                  agent serving a handler before it fails (${DEFAULT_WAITING_TIMEOUT_SECONDS})
                                                                                 [AGENTFLOW_WAITING_TIMEOUT]
  --log-level LEVEL               debug|info|warn|error (info)                 [AGENTFLOW_LOG_LEVEL]
  --version                       print agentflow's version
  -h, --help
`;

function hostPort(name: string, v: string): string {
  if (!/^(\[[0-9a-fA-F:.]+\]|[^\s:[\]]*):\d{1,5}$/.test(v) || Number(v.slice(v.lastIndexOf(':') + 1)) > 65535) {
    throw new UsageError(`--${name}: must be HOST:PORT (port 0-65535), got "${v}"`);
  }
  return v;
}

function int(name: string, v: string, min: number, max: number): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < min || n > max)
    throw new UsageError(`--${name}: must be an integer ${min}-${max}, got "${v}"`);
  return n;
}

/**
 * The flags, checked. The kubeconfig is only named here (`kubeconfigPath`): main() resolves it into
 * credentials, which takes a short-lived child process (kube/credentials.ts).
 */
type Config = Omit<OperatorConfig, 'logger' | 'registry' | 'kubeConfig'> & {
  logLevel: Level;
  kubeconfigPath: string | undefined;
};

/** The flags as given; an unknown flag or a missing value is a UsageError. */
function readFlags(argv: string[]): Record<string, unknown> {
  try {
    return parseArgs({
      args: argv,
      strict: true,
      options: {
        kubeconfig: { type: 'string' },
        ...ETCD_FLAG_OPTIONS,
        'watch-namespace': { type: 'string' },
        'ops-address': { type: 'string' },
        'dispatcher-address': { type: 'string' },
        'agent-dispatcher': { type: 'string' },
        namespace: { type: 'string' },
        'dispatcher-tls-mode': { type: 'string' },
        'dispatcher-tls-secret': { type: 'string' },
        'dispatcher-service': { type: 'string' },
        'dispatcher-tls-sans': { type: 'string' },
        'data-api-address': { type: 'string' },
        'data-api-service': { type: 'string' },
        'dispatcher-ca-configmap': { type: 'string' },
        'token-audience': { type: 'string' },
        'agent-lease-ttl': { type: 'string' },
        election: { type: 'string' },
        'lease-ttl': { type: 'string' },
        workers: { type: 'string' },
        'max-foreach-items': { type: 'string' },
        'max-spawned-children': { type: 'string' },
        'waiting-timeout': { type: 'string' },
        'log-level': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean' },
      },
    }).values;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

export function parse(argv: string[]): Config | 'help' {
  return configFrom(readFlags(argv));
}

/** The credentials the kubeconfig resolves to; a UsageError names the file and what is wrong with it. */
async function credentials(kubeconfigPath: string | undefined): Promise<KubeCredentials> {
  try {
    return await resolveKubeCredentials({ kubeconfig: kubeconfigPath });
  } catch (err) {
    if (!(err instanceof KubeconfigError)) throw err;
    const where = kubeconfigPath ?? 'the default kubeconfig';
    throw new UsageError(
      err.problem === 'load'
        ? `--kubeconfig: cannot load ${where}: ${err.message}`
        : `--kubeconfig: no cluster in ${where}: ${err.message}`,
    );
  }
}

function configFrom(values: Record<string, unknown>): Config | 'help' {
  if (values.help) return 'help';
  const etcdConn = etcdConnection(values);
  const agentDispatcher = flag(values, 'agent-dispatcher', 'AGENTFLOW_AGENT_DISPATCHER');
  if (!agentDispatcher) throw new UsageError('--agent-dispatcher (or AGENTFLOW_AGENT_DISPATCHER) is required');
  const nsRaw = flag(values, 'watch-namespace', 'AGENTFLOW_WATCH_NAMESPACE');
  const watchNamespaces = nsRaw === undefined ? undefined : nsRaw.split(',').map((n) => n.trim());
  for (const n of watchNamespaces ?? []) {
    if (!/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(n)) {
      throw new UsageError(`--watch-namespace: must be namespace names separated by commas, got "${n}" in "${nsRaw}"`);
    }
  }
  if (watchNamespaces && new Set(watchNamespaces).size !== watchNamespaces.length) {
    throw new UsageError(`--watch-namespace: "${nsRaw}" names a namespace twice`);
  }
  const level = flag(values, 'log-level', 'AGENTFLOW_LOG_LEVEL') ?? 'info';
  if (!['debug', 'info', 'warn', 'error'].includes(level)) {
    throw new UsageError(`--log-level: must be debug, info, warn or error, got "${level}"`);
  }
  const dnsName = (name: string, env: string, dflt: string) => {
    const v = flag(values, name, env) ?? dflt;
    if (!/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(v))
      throw new UsageError(`--${name}: must be a DNS-1123 label, got "${v}"`);
    return v;
  };
  const ownNamespace = dnsName('namespace', 'POD_NAMESPACE', 'agentflow-system');
  const tlsMode = flag(values, 'dispatcher-tls-mode', 'AGENTFLOW_DISPATCHER_TLS_MODE') ?? 'managed';
  if (tlsMode !== 'managed' && tlsMode !== 'secret') {
    throw new UsageError(`--dispatcher-tls-mode: must be managed or secret, got "${tlsMode}"`);
  }
  const service = dnsName('dispatcher-service', 'AGENTFLOW_DISPATCHER_SERVICE', 'agentflow-dispatcher');
  const dataApiService = dnsName('data-api-service', 'AGENTFLOW_DATA_API_SERVICE', DEFAULT_DATA_API_SERVICE);
  const dataApiAddress =
    flag(values, 'data-api-address', 'AGENTFLOW_DATA_API_ADDRESS') ?? `0.0.0.0:${DEFAULT_DATA_API_PORT}`;
  const extraSans = (flag(values, 'dispatcher-tls-sans', 'AGENTFLOW_DISPATCHER_TLS_SANS') ?? '')
    .split(',')
    .map((x) => x.trim())
    .filter((x) => x !== '');
  for (const san of extraSans) {
    if (!/^[A-Za-z0-9*.:-]{1,253}$/.test(san))
      throw new UsageError(`--dispatcher-tls-sans: "${san}" is not a DNS name or IP`);
  }
  const audience = flag(values, 'token-audience', 'AGENTFLOW_TOKEN_AUDIENCE') ?? 'agentflow';
  if (!/^\S{1,253}$/.test(audience))
    throw new UsageError(`--token-audience: must be 1-253 characters, got "${audience}"`);
  const podName = process.env.POD_NAME;
  const podNamespace = process.env.POD_NAMESPACE;
  return {
    kubeconfigPath: flag(values, 'kubeconfig', 'AGENTFLOW_KUBECONFIG'),
    ...etcdConn,
    ...(watchNamespaces && { watchNamespaces }),
    opsAddress: hostPort('ops-address', flag(values, 'ops-address', 'AGENTFLOW_OPS_ADDRESS') ?? '0.0.0.0:8080'),
    dispatcherListen: hostPort(
      'dispatcher-address',
      flag(values, 'dispatcher-address', 'AGENTFLOW_DISPATCHER_ADDRESS') ?? '0.0.0.0:7070',
    ),
    agentDispatcherAddress: hostPort('agent-dispatcher', agentDispatcher),
    namespace: ownNamespace,
    dispatcherTls: {
      mode: tlsMode,
      secretName: dnsName('dispatcher-tls-secret', 'AGENTFLOW_DISPATCHER_TLS_SECRET', 'agentflow-dispatcher-tls'),
      sans: [
        service,
        `${service}.${ownNamespace}`,
        `${service}.${ownNamespace}.svc`,
        `${service}.${ownNamespace}.svc.cluster.local`,
        // The API server dials the data API as <service>.<namespace>.svc and checks that name.
        ...(dataApiAddress === 'off'
          ? []
          : [`${dataApiService}.${ownNamespace}.svc`, `${dataApiService}.${ownNamespace}.svc.cluster.local`]),
        ...extraSans,
      ],
    },
    ...(dataApiAddress !== 'off' && {
      dataApi: { listen: hostPort('data-api-address', dataApiAddress), service: dataApiService },
    }),
    caConfigMap: dnsName('dispatcher-ca-configmap', 'AGENTFLOW_DISPATCHER_CA_CONFIGMAP', 'agentflow-dispatcher-ca'),
    tokenAudience: audience,
    agentLeaseTtlSeconds: int(
      'agent-lease-ttl',
      flag(values, 'agent-lease-ttl', 'AGENTFLOW_AGENT_LEASE_TTL') ?? '10',
      2,
      300,
    ),
    electionName: flag(values, 'election', 'AGENTFLOW_ELECTION') ?? 'agentflow-operator',
    leaseTtlSeconds: int('lease-ttl', flag(values, 'lease-ttl', 'AGENTFLOW_LEASE_TTL') ?? '15', 2, 300),
    identity: podName ?? hostname(),
    ...(podName && podNamespace && { pod: { name: podName, namespace: podNamespace } }),
    workers: int('workers', flag(values, 'workers', 'AGENTFLOW_WORKERS') ?? '2', 1, 64),
    workflowLimits: {
      maxForEachItems: int(
        'max-foreach-items',
        flag(values, 'max-foreach-items', 'AGENTFLOW_MAX_FOREACH_ITEMS') ?? String(DEFAULT_MAX_FOREACH_ITEMS),
        1,
        1_000_000,
      ),
      maxSpawnedChildren: int(
        'max-spawned-children',
        flag(values, 'max-spawned-children', 'AGENTFLOW_MAX_SPAWNED_CHILDREN') ?? String(DEFAULT_MAX_SPAWNED_CHILDREN),
        0,
        1_000_000,
      ),
    },
    waitingTimeoutSeconds: int(
      'waiting-timeout',
      flag(values, 'waiting-timeout', 'AGENTFLOW_WAITING_TIMEOUT') ?? String(DEFAULT_WAITING_TIMEOUT_SECONDS),
      1,
      604_800,
    ),
    logLevel: level as Level,
  };
}

/** Runs the command; resolves with the process exit code. */
export async function main(argv: string[]): Promise<number> {
  let cfg: ReturnType<typeof parse>;
  let kubeConfig: KubeCredentials;
  try {
    const values = readFlags(argv);
    // Before the config checks: --version needs no etcd, kubeconfig or dispatcher to answer.
    if (values.version && !values.help) {
      process.stdout.write(VERSION_LINE);
      return 0;
    }
    cfg = configFrom(values);
    if (cfg === 'help') {
      process.stdout.write(USAGE);
      return 0;
    }
    kubeConfig = await credentials(cfg.kubeconfigPath);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`agentflow-operator: ${err.message}\n\n${USAGE}`);
    return 2;
  }
  const logger = createLogger({ component: 'operator', identity: cfg.identity }, { level: cfg.logLevel });
  installFatalHandlers(logger);
  const { kubeconfigPath: _path, ...flags } = cfg;
  const tracing = await startTracing('agentflow-operator');
  if (tracing) logger.info('Exporting traces over OTLP (OTEL_EXPORTER_OTLP_* variables)');
  const operator = new Operator({ ...flags, kubeConfig, logger, registry: new Registry() });
  let signals = 0;
  const onSignal = () => {
    signals++;
    if (signals > 1) process.exit(1);
    operator.stop('stopped').catch((err: Error) => {
      logger.error('Stopping failed', { error: err });
      process.exit(1);
    });
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    await operator.start();
  } catch (err) {
    logger.error('Operator failed to start', { error: err as Error });
    return 1;
  }
  const why = await operator.done;
  await tracing?.shutdown().catch((err: Error) => logger.warn('Could not export the last spans', { error: err }));
  return why === 'lost' ? 1 : 0;
}
