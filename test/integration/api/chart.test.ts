import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { OPERATOR_NODE_OPTIONS } from '../../../src/lib/operator-node-options.ts';
import { StateStore } from '../../../src/state/index.ts';
import { binaryPath, pinnedVersions } from '../../cluster/binaries.ts';
import type { ClusterHandle, CommandResult } from '../../cluster/cluster-handle.ts';
import { ManagedProcess, waitFor } from '../../cluster/managed-process.ts';
import { freePort } from '../../cluster/ports.ts';
import { testCluster, uniqueName } from '../../cluster/testing.ts';

// The Helm chart with the real helm and the real kube-apiserver: lint, schema,
// the API server's verdict on every values variant (under the restricted Pod
// Security level), what the templates must say for each choice, and the
// bundled etcd's rendered flags, certificates and auth Job run against a real
// etcd.

type Labels = Record<string, string>;
interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { fieldRef?: { fieldPath: string } };
}
interface SecurityContext {
  runAsNonRoot?: boolean;
  runAsUser?: number;
  fsGroup?: number;
  fsGroupChangePolicy?: string;
  readOnlyRootFilesystem?: boolean;
  allowPrivilegeEscalation?: boolean;
  capabilities?: { drop?: string[]; add?: string[] };
  seccompProfile?: { type: string };
}
interface Probe {
  httpGet?: { path: string; port: string | number };
}
interface Container {
  name: string;
  image?: string;
  imagePullPolicy?: string;
  command?: string[];
  args?: string[];
  env?: EnvVar[];
  ports?: { name: string; containerPort: number }[];
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  securityContext?: SecurityContext;
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[];
}
interface PodSpec {
  securityContext?: SecurityContext;
  automountServiceAccountToken?: boolean;
  restartPolicy?: string;
  containers: Container[];
  initContainers?: Container[];
  volumes?: {
    name: string;
    secret?: { secretName: string; items?: { key: string; path: string }[] };
    configMap?: { name: string };
    emptyDir?: object;
    persistentVolumeClaim?: { claimName: string };
  }[];
  affinity?: unknown;
}
interface NetworkPolicyRule {
  ports: { protocol: string; port: number }[];
  from: Record<string, unknown>[];
}
interface PodTemplate {
  metadata: { labels: Labels; annotations?: Record<string, string> };
  spec: PodSpec;
}
interface Obj {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Labels; annotations?: Record<string, string> };
  type?: string;
  data?: Record<string, string>;
  spec?: {
    replicas?: number;
    serviceName?: string;
    selector?: Labels | { matchLabels: Labels };
    publishNotReadyAddresses?: boolean;
    clusterIP?: string;
    ports?: { name: string; port: number; targetPort: string | number }[];
    volumeClaimTemplates?: unknown[];
    template?: PodTemplate;
    // CronJob
    schedule?: string;
    timeZone?: string;
    concurrencyPolicy?: string;
    startingDeadlineSeconds?: number;
    successfulJobsHistoryLimit?: number;
    failedJobsHistoryLimit?: number;
    jobTemplate?: {
      metadata: { labels: Labels };
      spec: { backoffLimit?: number; activeDeadlineSeconds?: number; template: PodTemplate };
    };
    // PersistentVolumeClaim
    accessModes?: string[];
    storageClassName?: string;
    resources?: { requests?: Record<string, string> };
    endpoints?: { port: string; interval: string }[];
    podSelector?: { matchLabels: Labels };
    policyTypes?: string[];
    ingress?: NetworkPolicyRule[];
    secretName?: string;
    dnsNames?: string[];
    ipAddresses?: string[];
    issuerRef?: Record<string, string>;
  };
  rules?: unknown[];
  subjects?: { kind: string; name: string; namespace: string }[];
  roleRef?: { kind: string; name: string };
}

const chart = 'charts/agentflow';
const variants = ['default', 'external-etcd', 'ha', 'cert-manager'] as const;
type Variant = (typeof variants)[number];
// The cert-manager variant needs the cert-manager.io/v1 API: declared to helm, and served
// (a Certificate CRD) by the API server for the dry run.
const apiVersionsOf = (v: Variant | undefined) =>
  v === 'cert-manager' ? ['--api-versions', 'cert-manager.io/v1'] : [];
const valuesFile = (v: Variant) => `${chart}/ci/${v}-values.yaml`;
// helm assumes an old Kubernetes without a cluster; the chart requires >= 1.30.
const kubeVersion = ['--kube-version', pinnedVersions().KUBE_VERSION as string];
const ns = uniqueName('chart');
const fullname = 'af-agentflow';

let cluster: ClusterHandle;
beforeAll(async () => {
  cluster = testCluster();
  // Server-side dry runs of namespaced objects need the namespace; the restricted
  // Pod Security level makes the API server judge every pod template too.
  await cluster.client.post('/api/v1/namespaces', {
    metadata: {
      name: ns,
      labels: {
        'pod-security.kubernetes.io/enforce': 'restricted',
        'pod-security.kubernetes.io/warn': 'restricted',
        'pod-security.kubernetes.io/audit': 'restricted',
      },
    },
  });
});
let certificateCrdCreated = false;
afterAll(async () => {
  await cluster.client.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  if (certificateCrdCreated) {
    await cluster.client
      .delete('/apis/apiextensions.k8s.io/v1/customresourcedefinitions/certificates.cert-manager.io')
      .catch(() => undefined);
  }
  await cluster.close();
});

/**
 * A stand-in for cert-manager's Certificate CRD: the real group, kind and the
 * spec fields the chart uses, under a structural schema, so that a misspelt
 * field fails the server-side dry run (kubectl validates strictly).
 */
async function ensureCertificateCrd(): Promise<void> {
  const name = 'certificates.cert-manager.io';
  const exists = await cluster.kubectl(['get', 'crd', name, '-o', 'name']);
  if (exists.code !== 0) {
    const str = { type: 'string' };
    const strings = { type: 'array', items: str };
    const labelsAndAnnotations = {
      type: 'object',
      properties: {
        labels: { type: 'object', additionalProperties: str },
        annotations: { type: 'object', additionalProperties: str },
      },
    };
    await cluster.client.post('/apis/apiextensions.k8s.io/v1/customresourcedefinitions', {
      metadata: { name },
      spec: {
        group: 'cert-manager.io',
        names: { kind: 'Certificate', listKind: 'CertificateList', plural: 'certificates', singular: 'certificate' },
        scope: 'Namespaced',
        versions: [
          {
            name: 'v1',
            served: true,
            storage: true,
            schema: {
              openAPIV3Schema: {
                type: 'object',
                properties: {
                  spec: {
                    type: 'object',
                    required: ['secretName', 'issuerRef'],
                    properties: {
                      secretName: str,
                      secretTemplate: labelsAndAnnotations,
                      commonName: str,
                      dnsNames: strings,
                      ipAddresses: strings,
                      duration: str,
                      renewBefore: str,
                      usages: strings,
                      privateKey: {
                        type: 'object',
                        properties: {
                          algorithm: { type: 'string', enum: ['RSA', 'ECDSA', 'Ed25519'] },
                          size: { type: 'integer' },
                          encoding: str,
                          rotationPolicy: { type: 'string', enum: ['Never', 'Always'] },
                        },
                      },
                      issuerRef: {
                        type: 'object',
                        required: ['name'],
                        properties: { name: str, kind: str, group: str },
                      },
                    },
                  },
                  status: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true },
                },
              },
            },
          },
        ],
      },
    });
    certificateCrdCreated = true;
  }
  const established = await cluster.kubectl(['wait', '--for=condition=Established', '--timeout=30s', `crd/${name}`]);
  expect(established.code, established.stderr).toBe(0);
}

interface TemplateOptions {
  values?: string;
  set?: string[];
  extra?: string[];
}
function template(o: TemplateOptions = {}): Promise<CommandResult> {
  return cluster.helm([
    'template',
    'af',
    chart,
    '--namespace',
    ns,
    ...kubeVersion,
    ...(o.values ? ['--values', o.values] : []),
    ...(o.set ?? []).flatMap((s) => ['--set', s]),
    ...(o.extra ?? []),
  ]);
}

async function render(o: TemplateOptions = {}): Promise<Obj[]> {
  const r = await template(o);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  return parseAllDocuments(r.stdout)
    .map((d) => d.toJS() as Obj | null)
    .filter((d): d is Obj => d !== null);
}

function find(objs: Obj[], kind: string, name: string): Obj {
  const o = objs.find((d) => d.kind === kind && d.metadata.name === name);
  if (!o) throw new Error(`no ${kind} ${name} among ${objs.map((d) => `${d.kind}/${d.metadata.name}`).join(', ')}`);
  return o;
}

/** The pod template of a Deployment, StatefulSet, Job or CronJob; undefined for other kinds. */
function podTemplate(o: Obj): PodTemplate | undefined {
  return o.spec?.template ?? o.spec?.jobTemplate?.spec.template;
}

function podSpec(o: Obj): PodSpec {
  const spec = podTemplate(o)?.spec;
  if (!spec) throw new Error(`${o.kind}/${o.metadata.name} has no pod template`);
  return spec;
}

function operatorContainer(objs: Obj[]): Container {
  const c = podSpec(find(objs, 'Deployment', `${fullname}-operator`)).containers.find((x) => x.name === 'operator');
  if (!c) throw new Error('no operator container');
  return c;
}

function backupContainer(objs: Obj[]): Container {
  const c = podSpec(find(objs, 'CronJob', `${fullname}-backup`)).containers.find((x) => x.name === 'backup');
  if (!c) throw new Error('no backup container');
  return c;
}

/** The --etcd-* flags among args. */
const etcdFlags = (args: string[] | undefined) => args?.filter((a) => a.startsWith('--etcd-')) ?? [];

/** The value of `--name=value` among args; undefined when absent. */
function flag(args: string[] | undefined, name: string): string | undefined {
  const prefix = `--${name}=`;
  return args?.find((a) => a.startsWith(prefix))?.slice(prefix.length);
}

/** A Secret's data, decoded. */
function secretData(o: Obj): Record<string, string> {
  return Object.fromEntries(Object.entries(o.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64').toString()]));
}

/** Secrets of the release, decoded, by name. */
function secrets(objs: Obj[]): Record<string, Record<string, string>> {
  return Object.fromEntries(objs.filter((d) => d.kind === 'Secret').map((d) => [d.metadata.name, secretData(d)]));
}

/** The rules of the ClusterRole or Role in deploy/operator/rbac.yaml. */
function shippedRules(kind: 'ClusterRole' | 'Role'): unknown[] | undefined {
  return parseAllDocuments(readFileSync('deploy/operator/rbac.yaml', 'utf8'))
    .map((d) => d.toJS() as Obj)
    .find((d) => d.kind === kind)?.rules;
}

/** A whole snapshot through etcd's Snapshot API, as the backup Job takes it. */
async function snapshotBytes(store: StateStore): Promise<Buffer> {
  const stream = await store.client.maintenance.snapshot();
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    stream.on('data', (m) => chunks.push(Buffer.from(m.blob)));
    stream.on('error', reject);
    stream.on('end', () => resolve(Buffer.concat(chunks)));
  });
}

const agentPeer = {
  namespaceSelector: {},
  podSelector: { matchExpressions: [{ key: 'agentflow.io/pool', operator: 'Exists' }] },
};
const selectorOf = (component: string) => ({
  matchLabels: {
    'app.kubernetes.io/name': 'agentflow',
    'app.kubernetes.io/instance': 'af',
    'app.kubernetes.io/component': component,
  },
});

describe('chart', () => {
  // helm lint has no --api-versions: the cert-manager variant fails there by design (the chart
  // refuses certManager.enabled without the cert-manager API) and is checked by the dry run below.
  it('passes helm lint --strict with the defaults and with every ci/ values file that needs no extra API', async () => {
    for (const v of [undefined, ...variants.filter((x) => x !== 'cert-manager')]) {
      const r = await cluster.helm(['lint', '--strict', chart, ...kubeVersion, ...(v ? ['-f', valuesFile(v)] : [])]);
      expect(r.code, `${v}: ${r.stdout}${r.stderr}`).toBe(0);
      expect(r.stdout).toContain('1 chart(s) linted, 0 chart(s) failed');
      expect(r.stdout).not.toMatch(/\[(WARNING|ERROR)\]/);
    }
  });

  it('refuses dispatcher.tls.certManager.enabled where the cert-manager API is absent, saying what to do', async () => {
    const r = await template({ values: valuesFile('cert-manager') });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(
      'dispatcher.tls.certManager.enabled=true needs cert-manager: this cluster does not serve cert-manager.io/v1',
    );
    expect(r.stderr).toContain('--api-versions cert-manager.io/v1');
    const noIssuer = await template({
      set: ['dispatcher.tls.certManager.enabled=true'],
      extra: apiVersionsOf('cert-manager'),
    });
    expect(noIssuer.code).not.toBe(0);
    expect(noIssuer.stderr).toContain(
      'dispatcher.tls.certManager.enabled=true needs dispatcher.tls.certManager.issuerRef.name',
    );
    // Against the real API server, before the dry run below gives it a Certificate CRD.
    const served = await cluster.kubectl(['get', 'crd', 'certificates.cert-manager.io', '-o', 'name']);
    if (served.code !== 0) {
      const install = await cluster.helm([
        'install',
        'af',
        chart,
        '-n',
        ns,
        '--dry-run=server',
        '-f',
        valuesFile('cert-manager'),
      ]);
      expect(install.code).not.toBe(0);
      expect(install.stderr).toContain('this cluster does not serve cert-manager.io/v1');
    }
  });

  it.each(variants)('renders %s values the API server accepts under the restricted Pod Security level', async (v) => {
    if (v === 'cert-manager') await ensureCertificateCrd();
    const t = await template({ values: valuesFile(v), extra: apiVersionsOf(v) });
    expect(t.stderr).toBe('');
    expect(t.code).toBe(0);
    const r = await cluster.kubectl(['apply', '--server-side', '--force-conflicts', '--dry-run=server', '-f', '-'], {
      input: t.stdout,
    });
    // Any Pod Security violation of a pod template (the auth Job's too) comes back as a warning on stderr.
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const applied = r.stdout.trim().split('\n');
    const kinds = parseAllDocuments(t.stdout).filter((d) => d.toJS() !== null).length;
    expect(applied).toHaveLength(kinds);
    for (const line of applied) expect(line).toMatch(/ serverside-applied \(server dry run\)$/);
    expect(r.stdout).toContain(`deployment.apps/${fullname}-operator serverside-applied`);
    expect(r.stdout).toContain(`clusterrole.rbac.authorization.k8s.io/${fullname}-operator serverside-applied`);
    expect(r.stdout).toContain(`role.rbac.authorization.k8s.io/${fullname}-operator serverside-applied`);
    expect(r.stdout).toContain(`networkpolicy.networking.k8s.io/${fullname}-operator serverside-applied`);
    // The backup CronJob's pod template is judged under the restricted level too.
    expect(r.stdout).toContain(`cronjob.batch/${fullname}-backup serverside-applied`);
    expect(r.stdout).toContain(`persistentvolumeclaim/${fullname}-backup serverside-applied`);
    if (v === 'external-etcd') {
      expect(r.stdout).not.toContain('statefulset.apps');
      expect(r.stdout).not.toMatch(/^job\.batch\//m);
    } else {
      expect(r.stdout).toContain(`statefulset.apps/${fullname}-etcd serverside-applied`);
      expect(r.stdout).toContain(`job.batch/${fullname}-etcd-auth serverside-applied`);
      expect(r.stdout).toContain(`networkpolicy.networking.k8s.io/${fullname}-etcd serverside-applied`);
    }
    if (v === 'cert-manager') {
      expect(r.stdout).toContain(`certificate.cert-manager.io/${fullname}-dispatcher serverside-applied`);
    }
  });

  it('grants exactly the rules of deploy/operator/rbac.yaml: a ClusterRole, and a Role for Secrets in its namespace', async () => {
    const clusterRules = shippedRules('ClusterRole');
    const roleRules = shippedRules('Role');
    expect(clusterRules?.length).toBeGreaterThan(0);
    expect(roleRules).toEqual([{ apiGroups: [''], resources: ['secrets'], verbs: ['get', 'create', 'update'] }]);
    for (const rule of [
      { apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'], verbs: ['create'] },
      { apiGroups: ['authorization.k8s.io'], resources: ['subjectaccessreviews'], verbs: ['create'] },
      { apiGroups: [''], resources: ['configmaps'], verbs: ['get', 'create', 'update'] },
    ]) {
      expect(clusterRules).toContainEqual(rule);
    }
    // Secrets only through the namespaced Role: no cluster-wide access to them.
    expect(JSON.stringify(clusterRules)).not.toContain('secrets');

    const objs = await render();
    const clusterRole = find(objs, 'ClusterRole', `${fullname}-operator`);
    expect(clusterRole.rules).toEqual(clusterRules);
    const role = find(objs, 'Role', `${fullname}-operator`);
    expect(role.metadata.namespace).toBe(ns);
    expect(role.rules).toEqual(roleRules);
    // The others: the data API's (every authenticated user may ask; the leader checks the Workflow's
    // RBAC), and the approver's and signaler's, bound by nobody until a user binds them.
    expect(
      objs.filter((d) => d.kind === 'ClusterRole' || d.kind === 'Role').map((d) => `${d.kind}/${d.metadata.name}`),
    ).toEqual([
      `ClusterRole/${fullname}-data-api`,
      `ClusterRole/${fullname}-approver`,
      `ClusterRole/${fullname}-signaler`,
      `ClusterRole/${fullname}-operator`,
      `Role/${fullname}-operator`,
    ]);
    for (const [who, sub] of [
      ['approver', 'workflows/approval'],
      ['signaler', 'workflows/signal'],
    ]) {
      expect(find(objs, 'ClusterRole', `${fullname}-${who}`).rules).toEqual([
        { apiGroups: ['agentflow.io'], resources: ['workflows'], verbs: ['get', 'list', 'watch'] },
        { apiGroups: ['agentflow.io'], resources: [sub], verbs: ['update'] },
      ]);
    }
    expect(objs.filter((d) => d.kind.endsWith('Binding')).map((d) => d.roleRef?.name)).not.toContain(
      `${fullname}-approver`,
    );
    const subjects = [{ kind: 'ServiceAccount', name: `${fullname}-operator`, namespace: ns }];
    const binding = find(objs, 'ClusterRoleBinding', `${fullname}-operator`);
    expect(binding.roleRef).toMatchObject({ kind: 'ClusterRole', name: `${fullname}-operator` });
    expect(binding.subjects).toEqual(subjects);
    const roleBinding = find(objs, 'RoleBinding', `${fullname}-operator`);
    expect(roleBinding.metadata.namespace).toBe(ns);
    expect(roleBinding.roleRef).toMatchObject({ kind: 'Role', name: `${fullname}-operator` });
    expect(roleBinding.subjects).toEqual(subjects);
    find(objs, 'ServiceAccount', `${fullname}-operator`);
    expect(podSpec(find(objs, 'Deployment', `${fullname}-operator`))).toMatchObject({
      serviceAccountName: `${fullname}-operator`,
    });
  });

  it.each([
    ['etcd.bundled.replicas=2', "'/etcd/bundled/replicas'"],
    ['operator.replicas=-1', "'/operator/replicas'"],
    ['operator.logLevel=verbose', "'/operator/logLevel'"],
    ['operator.watchNamespace=Team_A', "'/operator/watchNamespace'"],
    ['operator.leaseTtlSeconds=1', "'/operator/leaseTtlSeconds'"],
    ['operator.waitingTimeoutSeconds=0', "'/operator/waitingTimeoutSeconds'"],
    ['dataApi.port=0', "'/dataApi/port'"],
    ['dataApi.externalName=Not_A_Host', "'/dataApi/externalName'"],
    ['dispatcher.service.type=ExternalName', "'/dispatcher/service/type'"],
    ['dispatcher.tls.mode=strict', "'/dispatcher/tls/mode'"],
    ['dispatcher.tls.extraSANs={not a name}', "'/dispatcher/tls/extraSANs/0'"],
    ['dispatcher.tls.certManager.duration=90days', "'/dispatcher/tls/certManager/duration'"],
    ['networkPolicy.enabled=maybe', "'/networkPolicy/enabled'"],
    ['networkPolicy.metrics.from[0].namespace=monitoring', "additional properties 'namespace' not allowed"],
    ['auth.tokenAudience=', "'/auth/tokenAudience'"],
    ['metrics.port=70000', "'/metrics/port'"],
    ['operator.replica=3', "additional properties 'replica' not allowed"],
    // Agents no longer get etcd: the old setting is refused, not ignored.
    ['agents.etcdEndpoints={http://a:2379}', "additional properties 'etcdEndpoints' not allowed"],
    ['backup.schedule=every hour', "'/backup/schedule'"],
    ['backup.schedule=0 * * *', "'/backup/schedule'"],
    ['backup.schedule=TZ=UTC 0 * * * *', "'/backup/schedule'"],
    ['backup.retain=0', "'/backup/retain'"],
    ['backup.retain=1001', "'/backup/retain'"],
    ['backup.timeZone=Europe/Ber lin', "'/backup/timeZone'"],
    ['backup.failedJobsHistoryLimit=-1', "'/backup/failedJobsHistoryLimit'"],
    ['backup.pvc.size=10GB', "'/backup/pvc/size'"],
    ['backup.pvc.accessModes={ReadOnlyMany}', "'/backup/pvc/accessModes/0'"],
    ['backup.resources.limits.memory=lots', "'/backup/resources/limits/memory'"],
    ['backup.retention=7', "additional properties 'retention' not allowed"],
    // Fixed, not a value: runs never overlap.
    ['backup.concurrencyPolicy=Allow', "additional properties 'concurrencyPolicy' not allowed"],
  ])('rejects %s through the schema, naming the field', async (set, message) => {
    const r = await template({ set: [set] });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("values don't meet the specifications of the schema");
    expect(r.stderr).toContain(message);
  });

  it('fails with a clear message when the bundled etcd is off and no external endpoints are given', async () => {
    const external = ['etcd.bundled.enabled=false', 'etcd.external.endpoints={https://etcd:2379}'];
    for (const [set, message] of [
      [
        ['etcd.bundled.enabled=false'],
        'etcd.bundled.enabled=false needs an external etcd: set etcd.external.endpoints',
      ],
      [
        [...external, 'etcd.external.tls.enabled=true'],
        'etcd.external.tls.enabled=true needs etcd.external.tls.secretName',
      ],
      [
        [...external, 'etcd.external.auth.username=agentflow'],
        'etcd.external.auth.username needs etcd.external.auth.passwordSecret.name',
      ],
      [
        [...external, 'etcd.external.auth.passwordSecret.name=etcd-password'],
        'etcd.external.auth.passwordSecret needs etcd.external.auth.username',
      ],
      [['etcd.external.endpoints={https://etcd:2379}'], 'etcd.external is only used with etcd.bundled.enabled=false'],
      [
        [...external, 'backup.etcd.secretName=etcd-root'],
        'backup.etcd.secretName is a client certificate, which needs TLS to etcd: set etcd.external.tls.enabled=true',
      ],
    ] as const) {
      const r = await template({ set: [...set] });
      expect(r.code, set.join(' ')).not.toBe(0);
      expect(r.stderr).toContain(message);
    }
  });

  it('serves the dispatcher over TLS: managed by the operator by default, from a Secret, or from cert-manager', async () => {
    const managed = operatorContainer(await render());
    expect(flag(managed.args, 'namespace')).toBe('$(POD_NAMESPACE)');
    expect(managed.env).toContainEqual({
      name: 'POD_NAMESPACE',
      valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } },
    });
    expect(flag(managed.args, 'dispatcher-service')).toBe(`${fullname}-dispatcher`);
    expect(flag(managed.args, 'dispatcher-tls-mode')).toBe('managed');
    expect(flag(managed.args, 'dispatcher-tls-secret')).toBe(`${fullname}-dispatcher-tls`);
    expect(flag(managed.args, 'dispatcher-tls-sans')).toBeUndefined();
    expect(flag(managed.args, 'dispatcher-ca-configmap')).toBe('agentflow-dispatcher-ca');
    expect(flag(managed.args, 'token-audience')).toBe('agentflow');

    const secret = operatorContainer(
      await render({
        set: [
          'dispatcher.tls.mode=secret',
          'dispatcher.tls.secretName=my-dispatcher-cert',
          'dispatcher.tls.extraSANs={dispatcher.example.com,10.1.2.3}',
          'dispatcher.tls.caConfigMapName=my-ca',
          'auth.tokenAudience=agentflow.example.com',
        ],
      }),
    );
    expect(flag(secret.args, 'dispatcher-tls-mode')).toBe('secret');
    expect(flag(secret.args, 'dispatcher-tls-secret')).toBe('my-dispatcher-cert');
    expect(flag(secret.args, 'dispatcher-tls-sans')).toBe('dispatcher.example.com,10.1.2.3');
    expect(flag(secret.args, 'dispatcher-ca-configmap')).toBe('my-ca');
    expect(flag(secret.args, 'token-audience')).toBe('agentflow.example.com');

    // cert-manager: a Certificate for the Service's names and the extra SANs, and the operator reads its Secret.
    const objs = await render({
      values: valuesFile('cert-manager'),
      set: ['dispatcher.tls.extraSANs={agentflow-dispatcher.example.com,192.0.2.10}'],
      extra: apiVersionsOf('cert-manager'),
    });
    const op = operatorContainer(objs);
    expect(flag(op.args, 'dispatcher-tls-mode')).toBe('secret');
    const cert = find(objs, 'Certificate', `${fullname}-dispatcher`);
    expect(cert.apiVersion).toBe('cert-manager.io/v1');
    expect(cert.spec?.secretName).toBe(flag(op.args, 'dispatcher-tls-secret'));
    const svc = `${fullname}-dispatcher`;
    expect(cert.spec?.dnsNames).toEqual([
      svc,
      `${svc}.${ns}`,
      `${svc}.${ns}.svc`,
      `${svc}.${ns}.svc.cluster.local`,
      // The data API's Service: the API server dials it by this name and checks it.
      `${fullname}-api.${ns}.svc`,
      `${fullname}-api.${ns}.svc.cluster.local`,
      'agentflow-dispatcher.example.com',
    ]);
    expect(cert.spec?.ipAddresses).toEqual(['192.0.2.10']);
    expect(cert.spec?.issuerRef).toEqual({ name: 'agentflow-ca', kind: 'ClusterIssuer', group: 'cert-manager.io' });
    expect(cert.spec).toMatchObject({ duration: '2160h', renewBefore: '360h' });
    find(objs, 'Service', svc);
    expect((await render({ extra: apiVersionsOf('cert-manager') })).filter((d) => d.kind === 'Certificate')).toEqual(
      [],
    );
  });

  it('points the operator at the bundled etcd over TLS with its own client certificate', async () => {
    const objs = await render();
    const op = operatorContainer(objs);
    // Every member by name (one here), so the client can fail over between members.
    expect(flag(op.args, 'etcd-endpoints')).toBe(`https://${fullname}-etcd-0.${fullname}-etcd-headless.${ns}.svc:2379`);
    expect(flag(op.args, 'etcd-ca-file')).toBe('/etc/agentflow/etcd-tls/ca.crt');
    expect(flag(op.args, 'etcd-cert-file')).toBe('/etc/agentflow/etcd-tls/tls.crt');
    expect(flag(op.args, 'etcd-key-file')).toBe('/etc/agentflow/etcd-tls/tls.key');
    expect(flag(op.args, 'etcd-username')).toBeUndefined();
    expect(op.volumeMounts).toEqual([{ name: 'etcd-tls', mountPath: '/etc/agentflow/etcd-tls', readOnly: true }]);
    const deployment = find(objs, 'Deployment', `${fullname}-operator`);
    expect(podSpec(deployment).volumes).toMatchObject([
      { name: 'etcd-tls', secret: { secretName: `${fullname}-etcd-client-operator` } },
    ]);
    const client = secretData(find(objs, 'Secret', `${fullname}-etcd-client-operator`));
    expect(Object.keys(client).sort()).toEqual(['ca.crt', 'tls.crt', 'tls.key']);
    expect(new X509Certificate(client['tls.crt'] ?? '').subject).toBe('CN=agentflow-operator');
    // A new CA or client certificate rolls the operator pods.
    expect(deployment.spec?.template?.metadata.annotations?.['checksum/etcd-client']).toMatch(/^[0-9a-f]{64}$/);
  });

  it('points the operator at an external etcd with TLS, a client certificate or a password, only as told', async () => {
    const external = await render({ values: valuesFile('external-etcd') });
    expect(external.filter((d) => ['StatefulSet', 'Job', 'Secret'].includes(d.kind))).toEqual([]);
    const op = operatorContainer(external);
    expect(flag(op.args, 'etcd-endpoints')).toBe(
      'https://etcd-0.etcd.example.com:2379,https://etcd-1.etcd.example.com:2379,https://etcd-2.etcd.example.com:2379',
    );
    expect(flag(op.args, 'etcd-ca-file')).toBe('/etc/agentflow/etcd-tls/ca.crt');
    expect(flag(op.args, 'etcd-cert-file')).toBe('/etc/agentflow/etcd-tls/tls.crt');
    expect(flag(op.args, 'etcd-key-file')).toBe('/etc/agentflow/etcd-tls/tls.key');
    expect(op.volumeMounts).toEqual([{ name: 'etcd-tls', mountPath: '/etc/agentflow/etcd-tls', readOnly: true }]);
    const spec = podSpec(find(external, 'Deployment', `${fullname}-operator`));
    expect(spec.volumes).toMatchObject([{ name: 'etcd-tls', secret: { secretName: 'agentflow-etcd-client' } }]);
    expect(find(external, 'Deployment', `${fullname}-operator`).spec?.template?.metadata.annotations).toBeUndefined();

    // A CA and a password instead of a client certificate.
    const password = await render({
      values: valuesFile('external-etcd'),
      set: [
        'etcd.external.tls.clientCertificate=false',
        'etcd.external.auth.username=agentflow',
        'etcd.external.auth.passwordSecret.name=etcd-password',
        'etcd.external.auth.passwordSecret.key=pw',
      ],
    });
    const pw = operatorContainer(password);
    expect(flag(pw.args, 'etcd-ca-file')).toBe('/etc/agentflow/etcd-tls/ca.crt');
    expect(pw.args?.filter((a) => /^--etcd-(cert|key)-file=/.test(a))).toEqual([]);
    expect(flag(pw.args, 'etcd-username')).toBe('agentflow');
    expect(flag(pw.args, 'etcd-password-file')).toBe('/etc/agentflow/etcd-auth/password');
    expect(pw.volumeMounts).toContainEqual({
      name: 'etcd-auth',
      mountPath: '/etc/agentflow/etcd-auth',
      readOnly: true,
    });
    expect(podSpec(find(password, 'Deployment', `${fullname}-operator`)).volumes).toContainEqual(
      expect.objectContaining({
        name: 'etcd-auth',
        secret: expect.objectContaining({ secretName: 'etcd-password', items: [{ key: 'pw', path: 'password' }] }),
      }),
    );

    const plain = await render({
      values: valuesFile('external-etcd'),
      set: ['etcd.external.tls.enabled=false'],
    });
    const noTls = operatorContainer(plain);
    expect(flag(noTls.args, 'etcd-endpoints')).toMatch(/^https:\/\/etcd-0/);
    expect(noTls.args?.filter((a) => /^--etcd-(ca|cert|key)-file=|^--etcd-username=/.test(a))).toEqual([]);
    expect(noTls.volumeMounts).toBeUndefined();
    expect(podSpec(find(plain, 'Deployment', `${fullname}-operator`)).volumes).toBeUndefined();
  });

  it.each([1, 3])('runs a %i-member etcd with client and peer TLS, advertising exactly its https peers', async (n) => {
    const objs = await render({ set: [`etcd.bundled.replicas=${n}`] });
    const sts = find(objs, 'StatefulSet', `${fullname}-etcd`);
    expect(sts.spec?.replicas).toBe(n);
    expect(sts.spec).toMatchObject({ podManagementPolicy: 'Parallel' });
    const headless = find(objs, 'Service', `${fullname}-etcd-headless`);
    expect(sts.spec?.serviceName).toBe(headless.metadata.name);
    expect(headless.spec).toMatchObject({ clusterIP: 'None', publishNotReadyAddresses: true });
    const client = find(objs, 'Service', `${fullname}-etcd`);
    expect(client.spec?.ports).toEqual([{ name: 'client', port: 2379, targetPort: 'client', protocol: 'TCP' }]);
    const podLabels = sts.spec?.template?.metadata.labels ?? {};
    for (const svc of [headless, client]) expect(podLabels).toMatchObject(svc.spec?.selector as Labels);

    const etcd = podSpec(sts).containers[0];
    const args = etcd?.args;
    const members = Array.from({ length: n }, (_, i) => `${fullname}-etcd-${i}`);
    const host = (m: string) => `${m}.${headless.metadata.name}.${ns}.svc`;
    const peer = (m: string) => `https://${host(m)}:2380`;
    expect(flag(args, 'initial-cluster')).toBe(members.map((m) => `${m}=${peer(m)}`).join(','));
    expect(flag(args, 'name')).toBe('$(POD_NAME)');
    // The operator is given every member's client URL (the server certificate names each member).
    const op = podSpec(find(objs, 'Deployment', `${fullname}-operator`)).containers[0];
    expect(flag(op?.args, 'etcd-endpoints')).toBe(members.map((m) => `https://${host(m)}:2379`).join(','));
    // Each pod, named by the StatefulSet, advertises the URL the others expect of it.
    for (const m of members) {
      expect(flag(args, 'initial-advertise-peer-urls')?.replace('$(POD_NAME)', m)).toBe(peer(m));
    }
    // No plaintext client or peer URL; client certificates required on both.
    expect(flag(args, 'listen-client-urls')).toBe('https://0.0.0.0:2379');
    expect(flag(args, 'advertise-client-urls')).toMatch(/^https:\/\//);
    expect(flag(args, 'listen-peer-urls')).toBe('https://0.0.0.0:2380');
    expect(args).toContain('--client-cert-auth');
    expect(args).toContain('--peer-client-cert-auth');
    expect(flag(args, 'trusted-ca-file')).toBe('/etc/etcd/tls/ca.crt');
    expect(flag(args, 'peer-trusted-ca-file')).toBe('/etc/etcd/tls/peer-ca.crt');
    expect(etcd?.volumeMounts).toContainEqual({ name: 'tls', mountPath: '/etc/etcd/tls', readOnly: true });
    expect(podSpec(sts).volumes).toContainEqual(
      expect.objectContaining({
        name: 'tls',
        secret: expect.objectContaining({ secretName: `${fullname}-etcd-member` }),
      }),
    );
    // The kubelet cannot present a client certificate: probes use the plain-HTTP metrics listener.
    expect(flag(args, 'listen-metrics-urls')).toBe('http://0.0.0.0:2381');
    expect(etcd?.ports).toContainEqual(expect.objectContaining({ name: 'metrics', containerPort: 2381 }));
    expect(etcd?.readinessProbe?.httpGet).toEqual({ path: '/health', port: 'metrics' });
    expect(etcd?.livenessProbe?.httpGet).toEqual({ path: '/livez', port: 'metrics' });
    expect(etcd?.env).toContainEqual({ name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } });
    expect(etcd?.ports).toContainEqual(expect.objectContaining({ name: 'client', containerPort: 2379 }));
    const pdb = objs.filter((d) => d.kind === 'PodDisruptionBudget' && d.metadata.name === `${fullname}-etcd`);
    expect(pdb.length).toBe(n === 3 ? 1 : 0);

    // The serving certificate covers every member and the client Service; the peer one every member.
    const member = secretData(find(objs, 'Secret', `${fullname}-etcd-member`));
    const sans = (pem: string | undefined) => new X509Certificate(pem ?? '').subjectAltName?.split(', ') ?? [];
    const svc = `${fullname}-etcd`;
    for (const name of [...members.map(host), svc, `${svc}.${ns}`, `${svc}.${ns}.svc`]) {
      expect(sans(member['server.crt'])).toContain(`DNS:${name}`);
    }
    expect(sans(member['peer.crt']).filter((s) => !s.endsWith('.cluster.local'))).toEqual(
      members.map((m) => `DNS:${host(m)}`),
    );
    expect(sts.spec?.template?.metadata.annotations?.['checksum/etcd-member']).toMatch(/^[0-9a-f]{64}$/);
  });

  it('issues the etcd certificates from two CAs: clients and server from one, members from the other', async () => {
    const s = secrets(await render());
    const ca = new X509Certificate(s[`${fullname}-etcd-ca`]?.['ca.crt'] ?? '');
    const peerCa = new X509Certificate(s[`${fullname}-etcd-ca`]?.['peer-ca.crt'] ?? '');
    const member = s[`${fullname}-etcd-member`] ?? {};
    const cert = (pem: string | undefined) => new X509Certificate(pem ?? '');
    const operator = cert(s[`${fullname}-etcd-client-operator`]?.['tls.crt']);
    const root = cert(s[`${fullname}-etcd-client-root`]?.['tls.crt']);
    expect(operator.subject).toBe('CN=agentflow-operator');
    expect(root.subject).toBe('CN=root');
    for (const c of [operator, root, cert(member['server.crt'])]) {
      expect(c.verify(ca.publicKey)).toBe(true);
      expect(c.verify(peerCa.publicKey)).toBe(false);
    }
    expect(cert(member['peer.crt']).verify(peerCa.publicKey)).toBe(true);
    expect(cert(member['peer.crt']).verify(ca.publicKey)).toBe(false);
    // Each consumer gets only the CA it checks against.
    expect(member['ca.crt']).toBe(ca.toString());
    expect(member['peer-ca.crt']).toBe(peerCa.toString());
    expect(s[`${fullname}-etcd-client-operator`]?.['ca.crt']).toBe(ca.toString());
  });

  it('keeps the etcd certificates across upgrades, and re-issues only what was deleted', async () => {
    // helm template --dry-run=server runs lookup against the API server, as an upgrade does.
    const renderSecrets = async () =>
      (await render({ extra: ['--dry-run=server'] })).filter((d) => d.kind === 'Secret');
    const upgrade = async () => secrets(await renderSecrets());
    const installed = await renderSecrets();
    const first = secrets(installed);
    const names = Object.keys(first);
    expect(names.sort()).toEqual(
      ['ca', 'client-operator', 'client-root', 'member'].map((x) => `${fullname}-etcd-${x}`).sort(),
    );
    // Create them, as `helm install` would have.
    const r = await cluster.kubectl(['apply', '-n', ns, '-f', '-'], {
      input: installed.map((d) => JSON.stringify(d)).join('\n'),
    });
    expect(r.code, r.stderr).toBe(0);
    try {
      expect(await upgrade()).toEqual(first);

      // Rotating the root client certificate: delete its Secret; the CA and the others stay.
      await cluster.kubectl(['delete', 'secret', '-n', ns, `${fullname}-etcd-client-root`]);
      const rotated = await upgrade();
      const root = `${fullname}-etcd-client-root`;
      expect(rotated[root]?.['tls.crt']).not.toBe(first[root]?.['tls.crt']);
      expect(rotated[root]?.['ca.crt']).toBe(first[root]?.['ca.crt']);
      for (const n of names.filter((x) => x !== root)) expect(rotated[n]).toEqual(first[n]);
      const ca = new X509Certificate(first[`${fullname}-etcd-ca`]?.['ca.crt'] ?? '');
      expect(new X509Certificate(rotated[root]?.['tls.crt'] ?? '').verify(ca.publicKey)).toBe(true);

      // A new CA re-issues everything.
      await cluster.kubectl(['delete', 'secret', '-n', ns, `${fullname}-etcd-ca`]);
      const fresh = await upgrade();
      for (const n of names) expect(fresh[n]).not.toEqual(first[n]);
    } finally {
      await cluster.kubectl(['delete', 'secret', '-n', ns, '-l', 'app.kubernetes.io/instance=af', '--wait=false']);
    }
  });

  it('keeps the etcd data on a claim, or in an emptyDir with persistence off', async () => {
    const pvc = find(
      await render({ set: ['etcd.bundled.persistence.storageClass=fast'] }),
      'StatefulSet',
      `${fullname}-etcd`,
    );
    expect(pvc.spec?.volumeClaimTemplates).toMatchObject([
      { metadata: { name: 'data' }, spec: { storageClassName: 'fast', resources: { requests: { storage: '1Gi' } } } },
    ]);
    expect(podSpec(pvc).volumes?.map((v) => v.name)).toEqual(['tls']);
    const flagData = flag(podSpec(pvc).containers[0]?.args, 'data-dir') ?? '';
    const mount = podSpec(pvc).containers[0]?.volumeMounts?.find((m) => m.name === 'data')?.mountPath ?? '/nowhere';
    expect(flagData.startsWith(`${mount}/`)).toBe(true);

    const ephemeral = find(
      await render({ set: ['etcd.bundled.persistence.enabled=false'] }),
      'StatefulSet',
      `${fullname}-etcd`,
    );
    expect(ephemeral.spec?.volumeClaimTemplates).toBeUndefined();
    expect(podSpec(ephemeral).volumes).toContainEqual({ name: 'data', emptyDir: {} });
  });

  it('snapshots etcd from a CronJob on the schedule, retention and history limits from values', async () => {
    const objs = await render({
      set: [
        'backup.schedule=@daily',
        'backup.timeZone=America/Argentina/Buenos_Aires',
        'backup.retain=7',
        'backup.successfulJobsHistoryLimit=2',
        'backup.failedJobsHistoryLimit=5',
      ],
    });
    const cron = find(objs, 'CronJob', `${fullname}-backup`);
    expect(cron.apiVersion).toBe('batch/v1');
    expect(cron.spec).toMatchObject({
      schedule: '@daily',
      timeZone: 'America/Argentina/Buenos_Aires',
      // Runs never overlap; a run missed by more than 5 minutes is skipped, not started late.
      concurrencyPolicy: 'Forbid',
      startingDeadlineSeconds: 300,
      successfulJobsHistoryLimit: 2,
      failedJobsHistoryLimit: 5,
    });
    expect(cron.spec?.jobTemplate?.spec).toMatchObject({ backoffLimit: 2, activeDeadlineSeconds: 600 });
    const spec = podSpec(cron);
    expect(spec.restartPolicy).toBe('Never');
    // It needs etcd only: no Kubernetes API token in its pods.
    expect(spec.automountServiceAccountToken).toBe(false);
    // The non-root user can write the claim.
    expect(spec.securityContext).toMatchObject({ runAsUser: 65532, fsGroup: 65532 });
    const c = backupContainer(objs);
    const op = operatorContainer(objs);
    expect(c.image).toBe(op.image);
    expect(c.imagePullPolicy).toBe(op.imagePullPolicy);
    expect(c.args?.slice(0, 2)).toEqual(['backup', 'snapshot']);
    expect(flag(c.args, 'dir')).toBe('/backups');
    expect(flag(c.args, 'retain')).toBe('7');
    expect(c.volumeMounts).toContainEqual({ name: 'backups', mountPath: '/backups' });
    expect(spec.volumes).toContainEqual({
      name: 'backups',
      persistentVolumeClaim: { claimName: `${fullname}-backup` },
    });
    for (const labels of [
      cron.metadata.labels,
      cron.spec?.jobTemplate?.metadata.labels,
      podTemplate(cron)?.metadata.labels,
    ]) {
      expect(labels).toMatchObject(selectorOf('backup').matchLabels);
    }

    // The defaults: hourly on the hour in the controller's time zone, a day of snapshots kept.
    const defaults = await render();
    const hourly = find(defaults, 'CronJob', `${fullname}-backup`);
    expect(hourly.spec).toMatchObject({
      schedule: '0 * * * *',
      successfulJobsHistoryLimit: 1,
      failedJobsHistoryLimit: 3,
    });
    expect(hourly.spec?.timeZone).toBeUndefined();
    expect(flag(backupContainer(defaults).args, 'retain')).toBe('24');

    // The schema checks a zone's shape; the API server knows the zones, and names the field.
    const t = await template({
      set: ['backup.timeZone=Mars/Olympus'],
      extra: ['--show-only', 'templates/backup.yaml'],
    });
    expect(t.code, t.stderr).toBe(0);
    const r = await cluster.kubectl(['apply', '--dry-run=server', '-f', '-'], { input: t.stdout });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('spec.timeZone: Invalid value: "Mars/Olympus": unknown time zone');
  });

  it('gives the backup Job the bundled etcd root certificate, or the external etcd credentials it is told', async () => {
    // Bundled: the operator's endpoints and key prefix, but etcd's root user (the Snapshot API is root's only).
    const bundled = await render();
    const op = operatorContainer(bundled);
    const c = backupContainer(bundled);
    expect(flag(c.args, 'etcd-endpoints')).toBe(flag(op.args, 'etcd-endpoints'));
    expect(flag(c.args, 'etcd-prefix')).toBe('/agentflow/v1');
    expect(flag(c.args, 'etcd-prefix')).toBe(flag(op.args, 'etcd-prefix'));
    expect(etcdFlags(c.args).filter((a) => /^--etcd-(ca|cert|key)-file=/.test(a))).toEqual([
      '--etcd-ca-file=/etc/agentflow/etcd-tls/ca.crt',
      '--etcd-cert-file=/etc/agentflow/etcd-tls/tls.crt',
      '--etcd-key-file=/etc/agentflow/etcd-tls/tls.key',
    ]);
    expect(c.volumeMounts).toContainEqual({ name: 'etcd-tls', mountPath: '/etc/agentflow/etcd-tls', readOnly: true });
    const secretOf = (objs: Obj[]) =>
      podSpec(find(objs, 'CronJob', `${fullname}-backup`)).volumes?.find((v) => v.name === 'etcd-tls')?.secret
        ?.secretName;
    expect(secretOf(bundled)).toBe(`${fullname}-etcd-client-root`);
    const root = secretData(find(bundled, 'Secret', `${fullname}-etcd-client-root`));
    expect(new X509Certificate(root['tls.crt'] ?? '').subject).toBe('CN=root');

    // External: the same Secret and flags as the operator, unless backup.etcd.secretName names a root certificate.
    const external = await render({ values: valuesFile('external-etcd') });
    expect(etcdFlags(backupContainer(external).args)).toEqual(etcdFlags(operatorContainer(external).args));
    expect(secretOf(external)).toBe('agentflow-etcd-client');
    const password = await render({
      values: valuesFile('external-etcd'),
      set: [
        'etcd.external.tls.clientCertificate=false',
        'etcd.external.auth.username=agentflow',
        'etcd.external.auth.passwordSecret.name=etcd-password',
      ],
    });
    const pw = backupContainer(password);
    expect(etcdFlags(pw.args)).toEqual(etcdFlags(operatorContainer(password).args));
    expect(flag(pw.args, 'etcd-username')).toBe('agentflow');
    expect(flag(pw.args, 'etcd-password-file')).toBe('/etc/agentflow/etcd-auth/password');
    expect(podSpec(find(password, 'CronJob', `${fullname}-backup`)).volumes).toContainEqual(
      expect.objectContaining({ name: 'etcd-auth', secret: expect.objectContaining({ secretName: 'etcd-password' }) }),
    );
    const own = await render({
      values: valuesFile('external-etcd'),
      set: [
        'etcd.external.auth.username=agentflow',
        'etcd.external.auth.passwordSecret.name=etcd-password',
        'backup.etcd.secretName=etcd-root-client',
      ],
    });
    const rootUser = backupContainer(own);
    expect(secretOf(own)).toBe('etcd-root-client');
    expect(flag(rootUser.args, 'etcd-cert-file')).toBe('/etc/agentflow/etcd-tls/tls.crt');
    // The certificate's CN is the user: the operator's password login is not passed on.
    expect(flag(rootUser.args, 'etcd-username')).toBeUndefined();
    expect(rootUser.volumeMounts?.map((m) => m.name)).toEqual(['backups', 'etcd-tls']);
    // The operator keeps its own credentials.
    expect(flag(operatorContainer(own).args, 'etcd-username')).toBe('agentflow');
  });

  it('makes the backup claim only while none exists: an upgrade finds it and leaves it (and its backups) alone', async () => {
    const install = (extra: string[] = []) =>
      cluster.helm(['install', 'af', chart, '-n', ns, '--dry-run=server', '--set', 'crds.enabled=false', ...extra]);
    const before = await install();
    expect(before.code, before.stderr).toBe(0);
    expect(before.stdout).toContain(`kind: PersistentVolumeClaim\nmetadata:\n  name: ${fullname}-backup`);
    await cluster.client.post(`/api/v1/namespaces/${ns}/persistentvolumeclaims`, {
      metadata: { name: `${fullname}-backup` },
      spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '1Gi' } } },
    });
    try {
      const after = await install();
      expect(after.code, after.stderr).toBe(0);
      expect(after.stdout).not.toContain('kind: PersistentVolumeClaim');
      expect(after.stdout).toContain(`claimName: ${fullname}-backup`);
    } finally {
      await cluster.client.delete(`/api/v1/namespaces/${ns}/persistentvolumeclaims/${fullname}-backup`);
    }
  });

  it('writes the backups to a claim kept on uninstall, or to an existing claim; backup.enabled=false renders neither', async () => {
    const objs = await render({ set: ['backup.pvc.size=50Gi', 'backup.pvc.storageClassName=fast'] });
    const pvc = find(objs, 'PersistentVolumeClaim', `${fullname}-backup`);
    // A hook: made once, owned by no release (uninstall keeps it), not waited for by --wait.
    expect(pvc.metadata.annotations).toMatchObject({
      'helm.sh/resource-policy': 'keep',
      'helm.sh/hook': 'pre-install,pre-upgrade',
    });
    expect(pvc.metadata.labels).toMatchObject(selectorOf('backup').matchLabels);
    expect(pvc.spec).toEqual({
      accessModes: ['ReadWriteOnce'],
      storageClassName: 'fast',
      resources: { requests: { storage: '50Gi' } },
    });
    const defaults = find(await render(), 'PersistentVolumeClaim', `${fullname}-backup`);
    expect(defaults.spec?.storageClassName).toBeUndefined();
    expect(defaults.spec?.resources).toEqual({ requests: { storage: '10Gi' } });
    const noProvisioning = find(
      await render({ set: ['backup.pvc.storageClassName=-', 'backup.pvc.accessModes={ReadWriteMany}'] }),
      'PersistentVolumeClaim',
      `${fullname}-backup`,
    );
    expect(noProvisioning.spec).toMatchObject({ storageClassName: '', accessModes: ['ReadWriteMany'] });

    const existing = await render({ set: ['backup.pvc.existingClaim=etcd-backups'] });
    expect(existing.filter((d) => d.kind === 'PersistentVolumeClaim')).toEqual([]);
    expect(podSpec(find(existing, 'CronJob', `${fullname}-backup`)).volumes).toContainEqual({
      name: 'backups',
      persistentVolumeClaim: { claimName: 'etcd-backups' },
    });

    for (const values of [undefined, valuesFile('external-etcd')]) {
      const off = await render({ values, set: ['backup.enabled=false'] });
      expect(off.filter((d) => ['CronJob', 'PersistentVolumeClaim'].includes(d.kind))).toEqual([]);
      expect(off.filter((d) => d.metadata.labels?.['app.kubernetes.io/component'] === 'backup')).toEqual([]);
    }
  });

  it.each(variants)('gives every container of %s values the secure defaults', async (v) => {
    const pods = (await render({ values: valuesFile(v), extra: apiVersionsOf(v) })).filter((d) => podTemplate(d));
    expect(pods.map((d) => d.kind).sort()).toEqual(
      v === 'external-etcd' ? ['CronJob', 'Deployment'] : ['CronJob', 'Deployment', 'Job', 'StatefulSet'],
    );
    for (const o of pods) {
      const spec = podSpec(o);
      for (const c of [...spec.containers, ...(spec.initContainers ?? [])]) {
        const where = `${o.kind}/${o.metadata.name} container ${c.name}`;
        // The container's own settings win over the pod's.
        const sc = { ...spec.securityContext, ...c.securityContext };
        expect(sc.runAsNonRoot, where).toBe(true);
        expect(sc.runAsUser, where).toBe(65532);
        expect(sc.readOnlyRootFilesystem, where).toBe(true);
        expect(sc.allowPrivilegeEscalation, where).toBe(false);
        expect(sc.capabilities?.drop, where).toEqual(['ALL']);
        expect(sc.capabilities?.add, where).toBeUndefined();
        expect(sc.seccompProfile?.type, where).toBe('RuntimeDefault');
      }
    }
  });

  it('renders the etcd auth Job as a restricted, token-less hook that holds only the root client certificate', async () => {
    const objs = await render();
    const job = find(objs, 'Job', `${fullname}-etcd-auth`);
    expect(job.metadata.annotations).toMatchObject({
      'helm.sh/hook': 'post-install,post-upgrade',
      'helm.sh/hook-delete-policy': 'before-hook-creation,hook-succeeded',
    });
    const script = find(objs, 'ConfigMap', `${fullname}-etcd-auth`);
    // The script exists before the Job that mounts it.
    expect(Number(script.metadata.annotations?.['helm.sh/hook-weight'])).toBeLessThan(
      Number(job.metadata.annotations?.['helm.sh/hook-weight']),
    );
    const spec = podSpec(job);
    expect(spec.automountServiceAccountToken).toBe(false);
    expect(spec.volumes).toEqual([
      { name: 'script', configMap: { name: `${fullname}-etcd-auth` } },
      { name: 'root-tls', secret: { secretName: `${fullname}-etcd-client-root`, defaultMode: 0o440 } },
    ]);
    const c = spec.containers[0];
    expect(c?.command).toEqual(['node', '/etc/agentflow/etcd-auth/setup.mjs']);
    expect(c?.env).toContainEqual({ name: 'ETCD_ENDPOINT', value: `https://${fullname}-etcd.${ns}.svc:2379` });
    expect(c?.env).toContainEqual({ name: 'ETCD_OPERATOR_USER', value: 'agentflow-operator' });
    expect(c?.env).toContainEqual({ name: 'ETCD_KEY_PREFIX', value: '/agentflow/' });
  });

  it('locks the bundled etcd down: its rendered flags, certificates and auth Job, run against a real etcd', async () => {
    const objs = await render();
    const dir = mkdtempSync(join(tmpdir(), 'chart-etcd-'));
    const s = secrets(objs);
    const write = (sub: string, data: Record<string, string> | undefined) => {
      mkdirSync(join(dir, sub), { recursive: true });
      for (const [k, v] of Object.entries(data ?? {})) writeFileSync(join(dir, sub, k), v, { mode: 0o600 });
    };
    write('etcd-tls', s[`${fullname}-etcd-member`]);
    write('root', s[`${fullname}-etcd-client-root`]);
    write('operator', s[`${fullname}-etcd-client-operator`]);
    const [client, peer, metrics] = [await freePort(), await freePort(), await freePort()];
    const port: Record<string, number> = { '2379': client, '2380': peer, '2381': metrics };
    // The StatefulSet's own args, with what differs off-cluster swapped: paths, ports, and the
    // pod's DNS names (loopback; the serving certificate also names localhost).
    const args = (podSpec(find(objs, 'StatefulSet', `${fullname}-etcd`)).containers[0]?.args ?? []).map((a) =>
      a
        .replaceAll('$(POD_NAME)', `${fullname}-etcd-0`)
        .replaceAll('/etc/etcd/tls/', `${dir}/etcd-tls/`)
        .replaceAll('/var/lib/etcd/', `${dir}/data/`)
        .replace(/\/\/[^/:,]+:(2379|2380|2381)\b/g, (_, p: string) => `//127.0.0.1:${port[p]}`),
    );
    expect(args).toContain('--client-cert-auth');
    const etcd = new ManagedProcess({
      name: 'chart-etcd',
      command: binaryPath('etcd'),
      args,
      logFile: join(dir, 'etcd.log'),
    });
    etcd.start();
    const job = podSpec(find(objs, 'Job', `${fullname}-etcd-auth`)).containers[0];
    const scriptFile = join(dir, 'setup.mjs');
    writeFileSync(
      scriptFile,
      (find(objs, 'ConfigMap', `${fullname}-etcd-auth`).data as Record<string, string>)['setup.mjs'] ?? '',
    );
    const env = Object.fromEntries((job?.env ?? []).map((e) => [e.name, e.value ?? '']));
    const runJob = () =>
      promisify(execFile)(process.execPath, [scriptFile], {
        env: {
          ...env,
          ETCD_ENDPOINT: `https://localhost:${client}`,
          ETCD_TLS_DIR: join(dir, 'root'),
          ETCD_WAIT_SECONDS: '30',
        },
      });
    const tlsFiles = (sub: string, ca = 'ca.crt') => ({
      ca: readFileSync(join(dir, sub, ca)),
      cert: readFileSync(join(dir, sub, sub === 'etcd-tls' ? 'peer.crt' : 'tls.crt')),
      key: readFileSync(join(dir, sub, sub === 'etcd-tls' ? 'peer.key' : 'tls.key')),
    });
    const store = new StateStore({ endpoints: [`https://localhost:${client}`], tls: tlsFiles('operator') });
    try {
      // The readiness probe's endpoint answers in plain HTTP without a certificate.
      await waitFor(
        'etcd /health on the metrics port',
        async () =>
          ((await (await fetch(`http://127.0.0.1:${metrics}/health`)).json()) as { health: string }).health === 'true',
        30_000,
      );
      const first = await runJob();
      expect(first.stdout).toContain('auth enable: done');
      // Idempotent: an upgrade runs it again.
      const again = await runJob();
      expect(again.stdout).toContain('etcd auth is enabled already; nothing to do');

      // The backup CronJob's Secret (root) may take snapshots; the operator's user may not.
      const backupSecret = podSpec(find(objs, 'CronJob', `${fullname}-backup`)).volumes?.find(
        (v) => v.name === 'etcd-tls',
      )?.secret?.secretName;
      expect(backupSecret).toBe(`${fullname}-etcd-client-root`);
      const backupStore = new StateStore({ endpoints: [`https://localhost:${client}`], tls: tlsFiles('root') });
      try {
        expect((await snapshotBytes(backupStore)).length).toBeGreaterThan(0);
      } finally {
        backupStore.close();
      }
      await expect(snapshotBytes(store)).rejects.toThrow(/permission denied/);

      // The operator's user: readwrite under /agentflow/, nothing elsewhere.
      await store.client.put('/agentflow/v1/probe').value('1').exec();
      expect(await store.client.get('/agentflow/v1/probe').string()).toBe('1');
      await expect(store.client.put('/elsewhere').value('1').exec()).rejects.toThrow(/permission denied/);
      await expect(store.client.get('/agentflow0').string()).rejects.toThrow(/permission denied/);
      // The probe still reports healthy with auth on.
      expect(((await (await fetch(`http://127.0.0.1:${metrics}/health`)).json()) as { health: string }).health).toBe(
        'true',
      );

      // Anonymous (no client certificate) and member-certificate clients are refused at the TLS handshake.
      const range = (tls: { ca: Buffer; cert?: Buffer; key?: Buffer }) =>
        new Promise<number>((resolve, reject) => {
          const req = request(
            { host: 'localhost', port: client, path: '/v3/kv/range', method: 'POST', ...tls },
            (res) => {
              res.resume();
              resolve(res.statusCode ?? 0);
            },
          );
          req.on('error', reject);
          req.end(JSON.stringify({ key: Buffer.from('/').toString('base64'), range_end: 'AA==' }));
        });
      await expect(range({ ca: tlsFiles('operator').ca })).rejects.toThrow();
      await expect(range(tlsFiles('etcd-tls'))).rejects.toThrow();
    } finally {
      store.close();
      await etcd.stop(5_000);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('admits the dispatcher port from agent pods only, metrics only from the listed peers, etcd only from the chart pods', async () => {
    const objs = await render();
    const operator = find(objs, 'NetworkPolicy', `${fullname}-operator`);
    expect(operator.spec?.podSelector).toEqual(selectorOf('operator'));
    expect(operator.spec?.policyTypes).toEqual(['Ingress']);
    // Default: the dispatcher rule and the data API (from anywhere: the API server is no pod a selector
    // names; only its front-proxy certificate gets past the TLS); nobody may reach the metrics port.
    const dataApiRule = { ports: [{ protocol: 'TCP', port: 8443 }] };
    expect(operator.spec?.ingress).toEqual([
      { ports: [{ protocol: 'TCP', port: 7070 }], from: [agentPeer] },
      dataApiRule,
    ]);
    const podLabels = find(objs, 'Deployment', `${fullname}-operator`).spec?.template?.metadata.labels ?? {};
    expect(podLabels).toMatchObject(selectorOf('operator').matchLabels);

    const etcd = find(objs, 'NetworkPolicy', `${fullname}-etcd`);
    expect(etcd.spec?.podSelector).toEqual(selectorOf('etcd'));
    expect(etcd.spec?.policyTypes).toEqual(['Ingress']);
    const clients = (components: string[]) => ({
      ports: [{ protocol: 'TCP', port: 2379 }],
      from: components.map((c) => ({ podSelector: selectorOf(c) })),
    });
    const peers = { ports: [{ protocol: 'TCP', port: 2380 }], from: [{ podSelector: selectorOf('etcd') }] };
    expect(etcd.spec?.ingress).toEqual([clients(['operator', 'etcd-auth', 'backup']), peers]);
    // Without backups, their pods are not admitted either.
    const noBackup = find(await render({ set: ['backup.enabled=false'] }), 'NetworkPolicy', `${fullname}-etcd`);
    expect(noBackup.spec?.ingress).toEqual([clients(['operator', 'etcd-auth']), peers]);
    // The selectors match the pods they are about.
    expect(find(objs, 'StatefulSet', `${fullname}-etcd`).spec?.template?.metadata.labels).toMatchObject(
      selectorOf('etcd').matchLabels,
    );
    expect(find(objs, 'Job', `${fullname}-etcd-auth`).spec?.template?.metadata.labels).toMatchObject(
      selectorOf('etcd-auth').matchLabels,
    );
    expect(podTemplate(find(objs, 'CronJob', `${fullname}-backup`))?.metadata.labels).toMatchObject(
      selectorOf('backup').matchLabels,
    );

    // From values: the metrics peers, and extra dispatcher peers (external agents), on the configured ports.
    const ha = await render({ values: valuesFile('ha'), set: ['metrics.port=9090', 'dispatcher.port=7171'] });
    const prometheus = {
      namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } },
      podSelector: { matchLabels: { 'app.kubernetes.io/name': 'prometheus' } },
    };
    expect(find(ha, 'NetworkPolicy', `${fullname}-operator`).spec?.ingress).toEqual([
      { ports: [{ protocol: 'TCP', port: 7171 }], from: [agentPeer] },
      dataApiRule,
      { ports: [{ protocol: 'TCP', port: 9090 }], from: [prometheus] },
    ]);
    const cm = await render({ values: valuesFile('cert-manager'), extra: apiVersionsOf('cert-manager') });
    expect(find(cm, 'NetworkPolicy', `${fullname}-operator`).spec?.ingress).toEqual([
      { ports: [{ protocol: 'TCP', port: 7070 }], from: [agentPeer, { ipBlock: { cidr: '10.20.0.0/16' } }] },
      dataApiRule,
    ]);

    const external = await render({ values: valuesFile('external-etcd') });
    expect(external.filter((d) => d.kind === 'NetworkPolicy').map((d) => d.metadata.name)).toEqual([
      `${fullname}-operator`,
    ]);
    expect((await render({ set: ['networkPolicy.enabled=false'] })).filter((d) => d.kind === 'NetworkPolicy')).toEqual(
      [],
    );
  });

  it('registers the data API: an APIService to the leader, its port and flags, names in the certificate, off when disabled', async () => {
    const objs = await render();
    const apiService = find(objs, 'APIService', 'v1alpha1.data.agentflow.io');
    expect(apiService.spec).toMatchObject({
      group: 'data.agentflow.io',
      version: 'v1alpha1',
      service: { name: `${fullname}-api`, namespace: ns, port: 443 },
    });
    // The operator fills in caBundle: the chart leaves it out, so an upgrade does not wipe it.
    expect(apiService.spec).not.toHaveProperty('caBundle');
    const svc = find(objs, 'Service', `${fullname}-api`);
    expect(svc.spec).toMatchObject({
      type: 'ClusterIP',
      selector: { ...selectorOf('operator').matchLabels, 'agentflow.io/role': 'leader' },
      ports: [{ name: 'https', port: 443, targetPort: 'data-api', protocol: 'TCP' }],
    });
    const c = operatorContainer(objs);
    expect(flag(c.args, 'data-api-address')).toBe('0.0.0.0:8443');
    expect(flag(c.args, 'data-api-service')).toBe(`${fullname}-api`);
    expect(c.ports).toContainEqual({ name: 'data-api', containerPort: 8443, protocol: 'TCP' });
    // The same rules as deploy/operator/data-api.yaml.
    const shippedDataApi = parseAllDocuments(readFileSync('deploy/operator/data-api.yaml', 'utf8'))
      .map((d) => d.toJS() as Obj)
      .find((d) => d.kind === 'ClusterRole')?.rules;
    expect(find(objs, 'ClusterRole', `${fullname}-data-api`).rules).toEqual(shippedDataApi);
    expect(shippedDataApi?.[0]).toEqual({
      apiGroups: ['data.agentflow.io'],
      resources: ['workflows/tasks', 'workflows/log', 'workflows/audit', 'agentpools/agents'],
      verbs: ['get'],
    });
    // The memo cache is a collection path: the API server asks `list` for a GET, `deletecollection` for a DELETE.
    expect(shippedDataApi).toContainEqual({
      apiGroups: ['data.agentflow.io'],
      resources: ['memo'],
      verbs: ['list', 'deletecollection'],
    });
    expect(find(objs, 'ClusterRoleBinding', `${fullname}-data-api`).subjects).toEqual([
      { apiGroup: 'rbac.authorization.k8s.io', kind: 'Group', name: 'system:authenticated' },
    ]);
    // The operator may patch that one APIService only.
    expect(find(objs, 'ClusterRole', `${fullname}-operator`).rules).toContainEqual({
      apiGroups: ['apiregistration.k8s.io'],
      resources: ['apiservices'],
      resourceNames: ['v1alpha1.data.agentflow.io'],
      verbs: ['get', 'patch'],
    });
    // cert-manager's certificate carries the API Service's names the API server checks.
    const cm = await render({ values: valuesFile('cert-manager'), extra: apiVersionsOf('cert-manager') });
    expect(find(cm, 'Certificate', `${fullname}-dispatcher`).spec?.dnsNames).toEqual(
      expect.arrayContaining([`${fullname}-api.${ns}.svc`, `${fullname}-api.${ns}.svc.cluster.local`]),
    );

    const external = await render({ set: ['dataApi.externalName=127.0.0.1', 'dataApi.port=9443'] });
    expect(find(external, 'Service', `${fullname}-api`).spec).toEqual({
      type: 'ExternalName',
      externalName: '127.0.0.1',
    });
    expect(find(external, 'APIService', 'v1alpha1.data.agentflow.io').spec).toMatchObject({ service: { port: 9443 } });
    expect(flag(operatorContainer(external).args, 'data-api-address')).toBe('0.0.0.0:9443');

    const off = await render({ set: ['dataApi.enabled=false'] });
    expect(off.filter((d) => d.kind === 'APIService' || d.metadata.name === `${fullname}-api`)).toEqual([]);
    expect(flag(operatorContainer(off).args, 'data-api-address')).toBe('off');
    expect(find(off, 'NetworkPolicy', `${fullname}-operator`).spec?.ingress).toHaveLength(1);
  });

  it('runs the operator with its pod identity, its ops port probes and its flags from values', async () => {
    const objs = await render({
      set: [
        'metrics.port=9090',
        'dispatcher.port=7171',
        'operator.leaseTtlSeconds=20',
        'operator.workers=4',
        'operator.logLevel=debug',
        'operator.watchNamespace=research',
        'operator.waitingTimeoutSeconds=90',
      ],
    });
    const op = operatorContainer(objs);
    for (const [name, fieldPath] of [
      ['POD_NAME', 'metadata.name'],
      ['POD_NAMESPACE', 'metadata.namespace'],
      ['POD_IP', 'status.podIP'],
    ]) {
      expect(op.env).toContainEqual({ name, valueFrom: { fieldRef: { fieldPath } } });
    }
    expect(flag(op.args, 'ops-address')).toBe('$(POD_IP):9090');
    expect(flag(op.args, 'dispatcher-address')).toBe('0.0.0.0:7171');
    expect(flag(op.args, 'lease-ttl')).toBe('20');
    expect(flag(op.args, 'workers')).toBe('4');
    expect(flag(op.args, 'log-level')).toBe('debug');
    expect(flag(op.args, 'watch-namespace')).toBe('research');
    expect(flag(op.args, 'waiting-timeout')).toBe('90');
    expect(flag(operatorContainer(await render()).args, 'waiting-timeout')).toBe('600');
    // NODE_OPTIONS: the operator's (src/lib/operator-node-options.ts) by default, the value's, or none.
    const nodeOptions = (c: Container) => c.env?.find((e) => e.name === 'NODE_OPTIONS')?.value;
    expect(nodeOptions(op)).toBe(OPERATOR_NODE_OPTIONS);
    expect(
      nodeOptions(operatorContainer(await render({ set: ['operator.nodeOptions=--max-old-space-size=300'] }))),
    ).toBe('--max-old-space-size=300');
    expect(operatorContainer(await render({ set: ['operator.nodeOptions='] })).env?.map((e) => e.name)).not.toContain(
      'NODE_OPTIONS',
    );
    // Tracing: no OTEL_* variable by default (the operator loads no SDK); the values' when asked.
    const otel = (c: Container) => (c.env ?? []).filter((e) => e.name.startsWith('OTEL_'));
    expect(otel(operatorContainer(await render()))).toEqual([]);
    const traced = operatorContainer(
      await render({
        set: [
          'tracing.otlpEndpoint=http://otel-collector.observability:4318',
          'tracing.resourceAttributes=deployment.environment=prod',
          'tracing.extraEnv[0].name=OTEL_TRACES_SAMPLER',
          'tracing.extraEnv[0].value=parentbased_always_on',
        ],
      }),
    );
    expect(otel(traced)).toEqual([
      { name: 'OTEL_EXPORTER_OTLP_ENDPOINT', value: 'http://otel-collector.observability:4318' },
      { name: 'OTEL_SERVICE_NAME', value: 'agentflow-operator' },
      { name: 'OTEL_RESOURCE_ATTRIBUTES', value: 'deployment.environment=prod' },
      { name: 'OTEL_TRACES_SAMPLER', value: 'parentbased_always_on' },
    ]);
    expect(op.ports).toEqual([
      { name: 'dispatcher', containerPort: 7171, protocol: 'TCP' },
      { name: 'ops', containerPort: 9090, protocol: 'TCP' },
      { name: 'data-api', containerPort: 8443, protocol: 'TCP' },
    ]);
    expect(op.readinessProbe?.httpGet).toEqual({ path: '/readyz', port: 'ops' });
    expect(op.livenessProbe?.httpGet).toEqual({ path: '/healthz', port: 'ops' });
    expect(flag(operatorContainer(await render()).args, 'watch-namespace')).toBeUndefined();
    // Several namespaces, comma-separated (escaped for --set, which splits on commas).
    const several = operatorContainer(await render({ set: ['operator.watchNamespace=team-a\\,team-b'] }));
    expect(flag(several.args, 'watch-namespace')).toBe('team-a,team-b');

    const podLabels = find(objs, 'Deployment', `${fullname}-operator`).spec?.template?.metadata.labels ?? {};
    const dispatcher = find(objs, 'Service', `${fullname}-dispatcher`);
    const selector = dispatcher.spec?.selector as Labels;
    expect(selector['agentflow.io/role']).toBe('leader');
    // The leader's pod (its template labels plus the role label) is what the Service selects.
    expect({ ...podLabels, 'agentflow.io/role': 'leader' }).toMatchObject(selector);
    expect(podLabels).not.toHaveProperty('agentflow.io/role');
    expect(dispatcher.spec?.ports).toMatchObject([{ port: 7171, targetPort: 'dispatcher' }]);
    const metrics = find(objs, 'Service', `${fullname}-operator-metrics`);
    expect(podLabels).toMatchObject(metrics.spec?.selector as Labels);
    expect(metrics.spec?.ports).toMatchObject([{ port: 9090, targetPort: 'ops' }]);
  });

  it('tells agents where the dispatcher is and puts that name in its certificate, but never gives them etcd', async () => {
    const defaults = await render();
    const op = operatorContainer(defaults);
    expect(flag(op.args, 'agent-dispatcher')).toBe(`${fullname}-dispatcher.${ns}.svc:7070`);
    const set = operatorContainer(
      await render({ set: ['agents.dispatcherAddress=dispatcher.example:443', 'dispatcher.tls.extraSANs={10.0.0.5}'] }),
    );
    expect(flag(set.args, 'agent-dispatcher')).toBe('dispatcher.example:443');
    // Agents verify the name they dial.
    expect(flag(set.args, 'dispatcher-tls-sans')).toBe('10.0.0.5,dispatcher.example');
    for (const c of [op, set]) expect(c.args?.filter((a) => a.startsWith('--agent-etcd'))).toEqual([]);
    // No agent-facing object carries etcd endpoints or certificates: the only etcd Secrets are the
    // bundled etcd's own, mounted by etcd, the operator, the auth Job and the backup CronJob.
    const mounts = defaults
      .filter((d) => podTemplate(d))
      .flatMap((d) => (podSpec(d).volumes ?? []).map((v) => `${d.kind}:${v.secret?.secretName ?? ''}`))
      .filter((m) => m.includes('-etcd-'));
    expect(mounts.sort()).toEqual([
      `CronJob:${fullname}-etcd-client-root`,
      `Deployment:${fullname}-etcd-client-operator`,
      `Job:${fullname}-etcd-client-root`,
      `StatefulSet:${fullname}-etcd-member`,
    ]);
  });

  it('renders the ServiceMonitor only where the monitoring.coreos.com/v1 API exists', async () => {
    const ha = valuesFile('ha');
    expect((await render({ values: ha })).filter((d) => d.kind === 'ServiceMonitor')).toEqual([]);
    const objs = await render({ values: ha, extra: ['--api-versions', 'monitoring.coreos.com/v1'] });
    const sm = find(objs, 'ServiceMonitor', `${fullname}-operator`);
    expect(sm.metadata.labels?.release).toBe('prometheus');
    expect(sm.spec?.endpoints).toEqual([{ port: 'ops', path: '/metrics', interval: '30s' }]);
    expect(find(objs, 'Service', `${fullname}-operator-metrics`).metadata.labels).toMatchObject(
      (sm.spec?.selector as { matchLabels: Labels }).matchLabels,
    );
    const off = await render({ extra: ['--api-versions', 'monitoring.coreos.com/v1'] });
    expect(off.filter((d) => d.kind === 'ServiceMonitor')).toEqual([]);

    // Against the real API server (no Prometheus Operator), the notes say why none was made.
    // crds.enabled=false: other test files install the CRDs with kubectl, and helm refuses to adopt them.
    const install = await cluster.helm([
      'install',
      'af',
      chart,
      '-n',
      ns,
      '--dry-run=server',
      '-f',
      ha,
      '--set',
      'crds.enabled=false',
    ]);
    expect(install.code, install.stderr).toBe(0);
    expect(install.stdout).not.toContain('kind: ServiceMonitor');
    expect(install.stdout).toContain('no ServiceMonitor was created');
    expect(install.stdout).toContain(`${fullname}-dispatcher.${ns}.svc:7070`);
    expect(install.stdout).toContain('kubectl apply -n research -f deploy/examples/');
  });

  it('says in the release notes how agents trust the dispatcher, and what the NetworkPolicy admits', async () => {
    const install = await cluster.helm([
      'install',
      'af',
      chart,
      '-n',
      ns,
      '--dry-run=server',
      '--set',
      'crds.enabled=false',
    ]);
    expect(install.code, install.stderr).toBe(0);
    const notes = install.stdout.slice(install.stdout.indexOf('NOTES:'));
    expect(notes).toContain('over TLS');
    expect(notes).toContain('ConfigMap agentflow-dispatcher-ca');
    expect(notes).toContain('Agents get no etcd access');
    expect(notes).toContain(`secret/${fullname}-dispatcher-tls`);
    expect(notes).toContain('etcd user agentflow-operator');
    expect(notes).toContain('list your Prometheus in networkPolicy.metrics.from');
    expect(notes).not.toMatch(/etcd at: http/);
    // Where the backups go, and how to see them.
    expect(notes).toContain(`cronjob/${fullname}-backup snapshots etcd on "0 * * * *", keeping the newest 24`);
    expect(notes).toContain(`pvc/${fullname}-backup (kept on uninstall)`);
    expect(notes).toContain(
      `kubectl -n ${ns} logs -l app.kubernetes.io/instance=af,app.kubernetes.io/component=backup`,
    );
    const plain = await cluster.helm([
      'install',
      'af',
      chart,
      '-n',
      ns,
      '--dry-run=server',
      '--set',
      'crds.enabled=false',
      '--set',
      'etcd.bundled.enabled=false',
      '--set',
      'etcd.external.endpoints={http://etcd:2379}',
    ]);
    expect(plain.code, plain.stderr).toBe(0);
    expect(plain.stdout).toContain('WARNING: the operator presents no etcd credentials');
    expect(plain.stdout).toContain('WARNING: etcd is reached without TLS');
    const off = await cluster.helm([
      'install',
      'af',
      chart,
      '-n',
      ns,
      '--dry-run=server',
      '--set',
      'crds.enabled=false',
      '--set',
      'backup.enabled=false',
    ]);
    expect(off.code, off.stderr).toBe(0);
    expect(off.stdout).toContain("Backups are off (backup.enabled=false): nothing snapshots agentflow's etcd.");
  });

  it('protects the operator with a PodDisruptionBudget unless disabled', async () => {
    const pdb = find(await render(), 'PodDisruptionBudget', `${fullname}-operator`);
    expect(pdb.spec).toMatchObject({ minAvailable: 1 });
    expect(
      (pdb.spec as unknown as { selector: { matchLabels: Labels } }).selector.matchLabels[
        'app.kubernetes.io/component'
      ],
    ).toBe('operator');
    const off = await render({ set: ['podDisruptionBudget.enabled=false'], values: valuesFile('ha') });
    expect(off.filter((d) => d.kind === 'PodDisruptionBudget')).toEqual([]);
  });
});
