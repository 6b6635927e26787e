import { describe, expect, it } from 'vitest';
import { EnvError, expand, resolveEnv } from '../../cluster/kubelet/env.ts';
import { podRequests } from '../../cluster/kubelet/kubelet.ts';
import { parseQuantity } from '../../cluster/kubelet/quantity.ts';
import type { Pod } from '../../cluster/kubelet/types.ts';

// The process kubelet's arithmetic and env rules must match the real kubelet's,
// or pods would be admitted or configured differently than on a real cluster.

describe('parseQuantity', () => {
  it.each([
    ['500m', 0.5],
    ['2', 2],
    ['1.5Gi', 1.5 * 2 ** 30],
    ['128Mi', 128 * 2 ** 20],
    ['2k', 2_000],
    ['1e3', 1_000],
    ['100M', 100e6],
  ])('%s = %d', (q, v) => {
    expect(parseQuantity(q)).toBeCloseTo(v);
  });

  it('rejects a malformed quantity', () => {
    expect(() => parseQuantity('1.5 Gi')).toThrow('invalid quantity "1.5 Gi"');
    expect(() => parseQuantity('lots')).toThrow('invalid quantity');
  });
});

describe('podRequests', () => {
  it('sums containers, takes the largest init container, adds overhead, defaults requests to limits', () => {
    const spec: Pod['spec'] = {
      containers: [
        { name: 'a', resources: { requests: { cpu: '500m', memory: '1Gi' } } },
        { name: 'b', resources: { limits: { cpu: '1', 'nvidia.com/gpu': '1' } } },
      ],
      initContainers: [{ name: 'i', resources: { requests: { cpu: '2' } } }],
      overhead: { memory: '64Mi' },
    };
    expect(podRequests(spec)).toEqual({ cpu: 2, memory: 2 ** 30 + 64 * 2 ** 20, 'nvidia.com/gpu': 1 });
  });
});

describe('env', () => {
  it('expands $(VAR) from earlier variables, keeps unknown references and unescapes $$', () => {
    expect(expand('$(A)-$(B)-$$(A)', { A: 'x' })).toBe('x-$(B)-$(A)');
  });

  const pod: Pod = {
    metadata: { name: 'p', namespace: 'ns', uid: 'u1', labels: { app: 'web' } },
    spec: { nodeName: 'n1', containers: [] },
  };
  const lookup = (data: Record<string, Record<string, string>>) => ({
    data: async (_kind: string, _ns: string, name: string) => data[name],
  });

  it('resolves downward-API fields, ConfigMap keys and envFrom prefixes in order', async () => {
    const env = await resolveEnv(
      pod,
      {
        name: 'c',
        envFrom: [{ prefix: 'CFG_', configMapRef: { name: 'cfg' } }],
        env: [
          { name: 'NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
          { name: 'APP', valueFrom: { fieldRef: { fieldPath: "metadata.labels['app']" } } },
          { name: 'IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
          { name: 'URL', value: 'http://$(IP):8080/$(NAME)' },
          { name: 'MODE', valueFrom: { configMapKeyRef: { name: 'cfg', key: 'mode' } } },
        ],
      },
      lookup({ cfg: { mode: 'fast' } }),
      '127.10.0.2',
      '127.10.0.1',
    );
    expect(env).toEqual({
      CFG_mode: 'fast',
      NAME: 'p',
      APP: 'web',
      IP: '127.10.0.2',
      URL: 'http://127.10.0.2:8080/p',
      MODE: 'fast',
    });
  });

  it('fails a missing key with the reason the kubelet reports, but skips optional ones', async () => {
    const missing = resolveEnv(
      pod,
      { name: 'c', env: [{ name: 'K', valueFrom: { secretKeyRef: { name: 's', key: 'absent' } } }] },
      lookup({ s: { other: 'v' } }),
      '',
      '',
    );
    await expect(missing).rejects.toBeInstanceOf(EnvError);
    await expect(missing).rejects.toThrow("couldn't find key absent in secret ns/s");
    const optional = await resolveEnv(
      pod,
      { name: 'c', env: [{ name: 'K', valueFrom: { secretKeyRef: { name: 's', key: 'absent', optional: true } } }] },
      lookup({}),
      '',
      '',
    );
    expect(optional).toEqual({});
  });
});
