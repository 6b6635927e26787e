import { describe, expect, it } from 'vitest';
import type { AgentPool } from '../../../src/api/agentpool.ts';
import { AGENT_NODE_OPTIONS } from '../../../src/lib/agent-node-options.ts';
import { type AgentEndpoints, buildPod, CREDENTIALS_DIR, templateHash } from '../../../src/operator/pool/pods.ts';

const endpoints: AgentEndpoints = {
  dispatcher: 'agentflow-dispatcher.agentflow-system:7070',
  caConfigMap: 'agentflow-dispatcher-ca',
  tokenAudience: 'agentflow',
};

function pool(spec: Partial<AgentPool['spec']['template']['spec']> = {}): AgentPool {
  return {
    apiVersion: 'agentflow.io/v1alpha1',
    kind: 'AgentPool',
    metadata: { name: 'writers', namespace: 'research', uid: 'u-1' },
    spec: {
      replicas: 1,
      agent: { capacity: 3 },
      template: { spec: { containers: [{ name: 'agent', image: 'agent:1' }], ...spec } },
    },
  } as AgentPool;
}

describe('agent pods', () => {
  it('mount an audience-bound projected token and the CA bundle, get no API token and no datastore settings', () => {
    const pod = buildPod(pool(), 0, endpoints, templateHash(pool(), endpoints));
    const spec = pod.spec;
    expect(spec?.automountServiceAccountToken).toBe(false);
    const vol = spec?.volumes?.find((v) => v.projected);
    expect(vol?.projected?.sources).toEqual([
      { serviceAccountToken: { audience: 'agentflow', expirationSeconds: 3600, path: 'token' } },
      { configMap: { name: 'agentflow-dispatcher-ca', items: [{ key: 'ca.crt', path: 'ca/ca.crt' }] } },
    ]);
    const c = spec?.containers[0];
    expect(c?.volumeMounts).toContainEqual({ name: vol?.name, mountPath: CREDENTIALS_DIR, readOnly: true });
    const env = Object.fromEntries((c?.env ?? []).map((e) => [e.name, e.value]));
    expect(env).toMatchObject({
      AGENTFLOW_TOKEN_FILE: `${CREDENTIALS_DIR}/token`,
      AGENTFLOW_DISPATCHER_CA_FILE: `${CREDENTIALS_DIR}/ca/ca.crt`,
      AGENTFLOW_CAPACITY: '3',
    });
    expect(Object.keys(env).filter((k) => k.includes('ETCD'))).toEqual([]);
  });

  it("run Node with the agent's NODE_OPTIONS unless the template sets its own", () => {
    const nodeOptions = (p: ReturnType<typeof buildPod>) =>
      (p.spec?.containers[0]?.env ?? []).filter((e) => e.name === 'NODE_OPTIONS').map((e) => e.value);
    expect(nodeOptions(buildPod(pool(), 0, endpoints, 'h'))).toEqual([AGENT_NODE_OPTIONS]);
    const own = pool({
      containers: [
        { name: 'agent', image: 'agent:1', env: [{ name: 'NODE_OPTIONS', value: '--max-old-space-size=512' }] },
      ],
    });
    // Both are listed; Kubernetes takes the last of a repeated name: the template's.
    expect(nodeOptions(buildPod(own, 0, endpoints, 'h')).at(-1)).toBe('--max-old-space-size=512');
  });

  it('are restricted by default (Pod Security "restricted"), but a template that sets its own context keeps it', () => {
    const pod = buildPod(pool(), 0, endpoints, 'h');
    expect(pod.spec?.securityContext).toEqual({ runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } });
    expect(pod.spec?.containers[0]?.securityContext).toEqual({
      allowPrivilegeEscalation: false,
      capabilities: { drop: ['ALL'] },
      runAsNonRoot: true,
      seccompProfile: { type: 'RuntimeDefault' },
    });
    const own = pool({
      securityContext: { runAsUser: 1000 },
      automountServiceAccountToken: true,
      containers: [{ name: 'agent', image: 'agent:1', securityContext: { privileged: false } }],
    });
    const mine = buildPod(own, 0, endpoints, 'h');
    expect(mine.spec?.securityContext).toEqual({ runAsUser: 1000 });
    expect(mine.spec?.containers[0]?.securityContext).toEqual({ privileged: false });
    expect(mine.spec?.automountServiceAccountToken).toBe(true);
  });

  it('replace a template volume or mount of the reserved name instead of duplicating it', () => {
    const sneaky = pool({
      volumes: [{ name: 'agentflow-credentials', emptyDir: {} }],
      containers: [
        { name: 'agent', image: 'agent:1', volumeMounts: [{ name: 'agentflow-credentials', mountPath: '/x' }] },
      ],
    });
    const pod = buildPod(sneaky, 0, endpoints, 'h');
    expect(pod.spec?.volumes?.filter((v) => v.name === 'agentflow-credentials')).toHaveLength(1);
    expect(pod.spec?.volumes?.find((v) => v.name === 'agentflow-credentials')?.projected).toBeDefined();
    expect(pod.spec?.containers[0]?.volumeMounts).toEqual([
      { name: 'agentflow-credentials', mountPath: CREDENTIALS_DIR, readOnly: true },
    ]);
  });
});
