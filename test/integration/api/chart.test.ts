import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { pinnedVersions } from '../../cluster/binaries.ts';
import type { ClusterHandle, CommandResult } from '../../cluster/cluster-handle.ts';
import { testCluster, uniqueName } from '../../cluster/testing.ts';

// The Helm chart with the real helm and the real kube-apiserver: lint, schema,
// the API server's verdict on every values variant (under the restricted Pod
// Security level), and what the templates must say for each choice.

type Labels = Record<string, string>;
interface EnvVar {
  name: string;
  valueFrom?: { fieldRef?: { fieldPath: string } };
}
interface SecurityContext {
  runAsNonRoot?: boolean;
  runAsUser?: number;
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
  containers: Container[];
  initContainers?: Container[];
  volumes?: { name: string; secret?: { secretName: string }; emptyDir?: object }[];
  affinity?: unknown;
}
interface Obj {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Labels; annotations?: Record<string, string> };
  spec?: {
    replicas?: number;
    serviceName?: string;
    selector?: Labels | { matchLabels: Labels };
    publishNotReadyAddresses?: boolean;
    clusterIP?: string;
    ports?: { name: string; port: number; targetPort: string | number }[];
    volumeClaimTemplates?: unknown[];
    template?: { metadata: { labels: Labels }; spec: PodSpec };
    endpoints?: { port: string; interval: string }[];
  };
  rules?: unknown[];
  subjects?: { kind: string; name: string; namespace: string }[];
  roleRef?: { kind: string; name: string };
}

const chart = 'charts/agentflow';
const variants = ['default', 'external-etcd', 'ha'] as const;
const valuesFile = (v: (typeof variants)[number]) => `${chart}/ci/${v}-values.yaml`;
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
afterAll(async () => {
  await cluster.client.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  await cluster.close();
});

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

function podSpec(o: Obj): PodSpec {
  const spec = o.spec?.template?.spec;
  if (!spec) throw new Error(`${o.kind}/${o.metadata.name} has no pod template`);
  return spec;
}

function operatorContainer(objs: Obj[]): Container {
  const c = podSpec(find(objs, 'Deployment', `${fullname}-operator`)).containers.find((x) => x.name === 'operator');
  if (!c) throw new Error('no operator container');
  return c;
}

/** The value of `--name=value` among args; undefined when absent. */
function flag(args: string[] | undefined, name: string): string | undefined {
  const prefix = `--${name}=`;
  return args?.find((a) => a.startsWith(prefix))?.slice(prefix.length);
}

describe('chart', () => {
  it('passes helm lint --strict with the defaults and with every ci/ values file', async () => {
    for (const v of [undefined, ...variants]) {
      const r = await cluster.helm(['lint', '--strict', chart, ...kubeVersion, ...(v ? ['-f', valuesFile(v)] : [])]);
      expect(r.code, `${v}: ${r.stdout}${r.stderr}`).toBe(0);
      expect(r.stdout).toContain('1 chart(s) linted, 0 chart(s) failed');
      expect(r.stdout).not.toMatch(/\[(WARNING|ERROR)\]/);
    }
  });

  it.each(variants)('renders %s values the API server accepts under the restricted Pod Security level', async (v) => {
    const t = await template({ values: valuesFile(v) });
    expect(t.stderr).toBe('');
    expect(t.code).toBe(0);
    const r = await cluster.kubectl(['apply', '--server-side', '--force-conflicts', '--dry-run=server', '-f', '-'], {
      input: t.stdout,
    });
    // Any Pod Security violation of a pod template comes back as a warning on stderr.
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const applied = r.stdout.trim().split('\n');
    const kinds = parseAllDocuments(t.stdout).filter((d) => d.toJS() !== null).length;
    expect(applied).toHaveLength(kinds);
    for (const line of applied) expect(line).toMatch(/ serverside-applied \(server dry run\)$/);
    expect(r.stdout).toContain(`deployment.apps/${fullname}-operator serverside-applied`);
    expect(r.stdout).toContain(`clusterrole.rbac.authorization.k8s.io/${fullname}-operator serverside-applied`);
    if (v === 'external-etcd') expect(r.stdout).not.toContain('statefulset.apps');
    else expect(r.stdout).toContain(`statefulset.apps/${fullname}-etcd serverside-applied`);
  });

  it('grants exactly the rules of deploy/operator/rbac.yaml, bound to its own ServiceAccount', async () => {
    const reference = parseAllDocuments(readFileSync('deploy/operator/rbac.yaml', 'utf8'))
      .map((d) => d.toJS() as Obj)
      .find((d) => d.kind === 'ClusterRole');
    expect(reference?.rules?.length).toBeGreaterThan(0);
    const objs = await render();
    const roles = objs.filter((d) => d.kind === 'ClusterRole' || d.kind === 'Role');
    expect(roles.map((d) => d.metadata.name)).toEqual([`${fullname}-operator`]);
    expect(roles[0]?.rules).toEqual(reference?.rules);
    const binding = find(objs, 'ClusterRoleBinding', `${fullname}-operator`);
    expect(binding.roleRef).toMatchObject({ kind: 'ClusterRole', name: `${fullname}-operator` });
    expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: `${fullname}-operator`, namespace: ns }]);
    find(objs, 'ServiceAccount', `${fullname}-operator`);
    expect(podSpec(find(objs, 'Deployment', `${fullname}-operator`))).toMatchObject({
      serviceAccountName: `${fullname}-operator`,
    });
  });

  it.each([
    ['etcd.bundled.replicas=2', "'/etcd/bundled/replicas'"],
    ['operator.replicas=-1', "'/operator/replicas'"],
    ['operator.logLevel=verbose', "'/operator/logLevel'"],
    ['operator.leaseTtlSeconds=1', "'/operator/leaseTtlSeconds'"],
    ['dispatcher.service.type=ExternalName', "'/dispatcher/service/type'"],
    ['metrics.port=70000', "'/metrics/port'"],
    ['operator.replica=3', "additional properties 'replica' not allowed"],
  ])('rejects %s through the schema, naming the field', async (set, message) => {
    const r = await template({ set: [set] });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("values don't meet the specifications of the schema");
    expect(r.stderr).toContain(message);
  });

  it('fails with a clear message when the bundled etcd is off and no external endpoints are given', async () => {
    const r = await template({ set: ['etcd.bundled.enabled=false'] });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('etcd.bundled.enabled=false needs an external etcd: set etcd.external.endpoints');
    const tls = await template({
      set: [
        'etcd.bundled.enabled=false',
        'etcd.external.endpoints={https://etcd:2379}',
        'etcd.external.tls.enabled=true',
      ],
    });
    expect(tls.code).not.toBe(0);
    expect(tls.stderr).toContain('etcd.external.tls.enabled=true needs etcd.external.tls.secretName');
    const both = await template({ set: ['etcd.external.endpoints={https://etcd:2379}'] });
    expect(both.code).not.toBe(0);
    expect(both.stderr).toContain('etcd.external is only used with etcd.bundled.enabled=false');
  });

  it('points the operator at the bundled etcd Service, or at the external endpoints with TLS only when on', async () => {
    const bundled = operatorContainer(await render());
    expect(flag(bundled.args, 'etcd-endpoints')).toBe(`http://${fullname}-etcd.${ns}.svc:2379`);

    const external = await render({ values: valuesFile('external-etcd') });
    expect(external.filter((d) => d.kind === 'StatefulSet')).toEqual([]);
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

    const plain = await render({
      values: valuesFile('external-etcd'),
      set: ['etcd.external.tls.enabled=false'],
    });
    const noTls = operatorContainer(plain);
    expect(flag(noTls.args, 'etcd-endpoints')).toMatch(/^https:\/\/etcd-0/);
    for (const c of [bundled, noTls]) {
      expect(c.args?.filter((a) => /^--etcd-(ca|cert|key)-file=/.test(a))).toEqual([]);
      expect(c.volumeMounts).toBeUndefined();
    }
    expect(podSpec(find(plain, 'Deployment', `${fullname}-operator`)).volumes).toBeUndefined();
  });

  it.each([1, 3])('runs a %i-member etcd whose members advertise exactly the --initial-cluster peers', async (n) => {
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
    const members = Array.from({ length: n }, (_, i) => `${fullname}-etcd-${i}`);
    const peer = (m: string) => `http://${m}.${headless.metadata.name}.${ns}.svc:2380`;
    expect(flag(etcd?.args, 'initial-cluster')).toBe(members.map((m) => `${m}=${peer(m)}`).join(','));
    expect(flag(etcd?.args, 'name')).toBe('$(POD_NAME)');
    // Each pod, named by the StatefulSet, advertises the URL the others expect of it.
    for (const m of members) {
      expect(flag(etcd?.args, 'initial-advertise-peer-urls')?.replace('$(POD_NAME)', m)).toBe(peer(m));
    }
    expect(etcd?.env).toContainEqual({ name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } });
    expect(etcd?.readinessProbe?.httpGet).toEqual({ path: '/health', port: 'client' });
    expect(etcd?.ports).toContainEqual(expect.objectContaining({ name: 'client', containerPort: 2379 }));
    const pdb = objs.filter((d) => d.kind === 'PodDisruptionBudget' && d.metadata.name === `${fullname}-etcd`);
    expect(pdb.length).toBe(n === 3 ? 1 : 0);
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
    expect(podSpec(pvc).volumes).toBeUndefined();
    const flagData = flag(podSpec(pvc).containers[0]?.args, 'data-dir') ?? '';
    const mount = podSpec(pvc).containers[0]?.volumeMounts?.find((m) => m.name === 'data')?.mountPath ?? '/nowhere';
    expect(flagData.startsWith(`${mount}/`)).toBe(true);

    const ephemeral = find(
      await render({ set: ['etcd.bundled.persistence.enabled=false'] }),
      'StatefulSet',
      `${fullname}-etcd`,
    );
    expect(ephemeral.spec?.volumeClaimTemplates).toBeUndefined();
    expect(podSpec(ephemeral).volumes).toEqual([{ name: 'data', emptyDir: {} }]);
  });

  it.each(variants)('gives every container of %s values the secure defaults', async (v) => {
    const pods = (await render({ values: valuesFile(v) })).filter((d) => d.spec?.template?.spec);
    expect(pods.map((d) => d.kind).sort()).toEqual(
      v === 'external-etcd' ? ['Deployment'] : ['Deployment', 'StatefulSet'],
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

  it('runs the operator with its pod identity, its ops port probes and its flags from values', async () => {
    const objs = await render({
      set: [
        'metrics.port=9090',
        'dispatcher.port=7171',
        'operator.leaseTtlSeconds=20',
        'operator.workers=4',
        'operator.logLevel=debug',
        'operator.watchNamespace=research',
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
    expect(op.ports).toEqual([
      { name: 'dispatcher', containerPort: 7171, protocol: 'TCP' },
      { name: 'ops', containerPort: 9090, protocol: 'TCP' },
    ]);
    expect(op.readinessProbe?.httpGet).toEqual({ path: '/readyz', port: 'ops' });
    expect(op.livenessProbe?.httpGet).toEqual({ path: '/healthz', port: 'ops' });
    expect(flag(operatorContainer(await render()).args, 'watch-namespace')).toBeUndefined();

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

  it('tells agents where the dispatcher and etcd are, by default and from values', async () => {
    const defaults = operatorContainer(await render());
    expect(flag(defaults.args, 'agent-dispatcher')).toBe(`${fullname}-dispatcher.${ns}.svc:7070`);
    expect(flag(defaults.args, 'agent-etcd-endpoints')).toBeUndefined();
    const set = operatorContainer(
      await render({
        set: ['agents.dispatcherAddress=dispatcher.example:443', 'agents.etcdEndpoints={http://a:2379,http://b:2379}'],
      }),
    );
    expect(flag(set.args, 'agent-dispatcher')).toBe('dispatcher.example:443');
    expect(flag(set.args, 'agent-etcd-endpoints')).toBe('http://a:2379,http://b:2379');
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
    const install = await cluster.helm(['install', 'af', chart, '-n', ns, '--dry-run=server', '-f', ha]);
    expect(install.code, install.stderr).toBe(0);
    expect(install.stdout).not.toContain('kind: ServiceMonitor');
    expect(install.stdout).toContain('no ServiceMonitor was created');
    expect(install.stdout).toContain(`${fullname}-dispatcher.${ns}.svc:7070`);
    expect(install.stdout).toContain('kubectl apply -n research -f deploy/examples/');
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
