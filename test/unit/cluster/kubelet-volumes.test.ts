import { lstatSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { InvalidPayloadPathError, validatePayloadPath, writeAtomically } from '../../cluster/kubelet/atomic-writer.ts';
import { type FsView, MountPlanError, planMounts, renderMountScript } from '../../cluster/kubelet/mount-plan.ts';
import { type CachedToken, tokenNeedsRefresh } from '../../cluster/kubelet/pod-volumes.ts';
import {
  mountsServiceAccount,
  SA_MOUNT_PATH,
  withServiceAccountVolume,
} from '../../cluster/kubelet/service-account.ts';
import type { Pod, Volume } from '../../cluster/kubelet/types.ts';
import { subPathOf } from '../../cluster/kubelet/volume-mounts.ts';
import {
  buildPayload,
  formatMap,
  type Payload,
  tokenKey,
  type VolumeInputs,
  VolumeSetupError,
  volumeReferences,
  volumeType,
} from '../../cluster/kubelet/volume-payload.ts';

// What a pod finds in its volumes, and where, must match a real kubelet: file
// names and modes from items/defaultMode, the kubelet's error messages, its
// token refresh rule, and mounts that never touch the host.

const pod: Pod = {
  metadata: { name: 'agent-0', namespace: 'team', uid: 'u-1', labels: { b: '2', a: 'x"y' }, annotations: {} },
  spec: { containers: [{ name: 'c', resources: { limits: { memory: '64Mi' } } }] },
};

function inputs(over: Partial<VolumeInputs> = {}): VolumeInputs {
  return {
    configMaps: new Map([['cfg', { data: { 'config.yaml': 'a: 1', other: 'o' }, binaryData: { bin: 'AAE=' } }]]),
    secrets: new Map([['creds', { data: { password: Buffer.from('pw').toString('base64') } }]]),
    tokens: new Map(),
    ...over,
  };
}

function files(p: Payload): Record<string, [string, string]> {
  return Object.fromEntries([...p].map(([k, f]) => [k, [f.data.toString('utf8'), f.mode.toString(8)]]));
}

describe('volume payloads', () => {
  it('projects every key of a ConfigMap at defaultMode 0644, binaryData decoded', () => {
    const p = buildPayload({ name: 'v', configMap: { name: 'cfg' } }, pod, inputs());
    expect(files(p)).toEqual({ 'config.yaml': ['a: 1', '644'], other: ['o', '644'], bin: ['\u0000\u0001', '644'] });
  });

  it('maps items to paths with their own modes, over defaultMode', () => {
    const v: Volume = {
      name: 'v',
      configMap: {
        name: 'cfg',
        defaultMode: 0o400,
        items: [
          { key: 'config.yaml', path: 'etc/agent.yaml', mode: 0o600 },
          { key: 'other', path: 'o' },
        ],
      },
    };
    expect(files(buildPayload(v, pod, inputs()))).toEqual({ 'etc/agent.yaml': ['a: 1', '600'], o: ['o', '400'] });
  });

  it('decodes Secret data and names the missing Secret or key like the kubelet', () => {
    const ok = buildPayload({ name: 'v', secret: { secretName: 'creds', defaultMode: 0o440 } }, pod, inputs());
    expect(files(ok)).toEqual({ password: ['pw', '440'] });
    expect(() => buildPayload({ name: 'v', secret: { secretName: 'gone' } }, pod, inputs())).toThrow(
      'secret "gone" not found',
    );
    expect(() =>
      buildPayload({ name: 'v', secret: { secretName: 'creds', items: [{ key: 'nope', path: 'x' }] } }, pod, inputs()),
    ).toThrow('references non-existent secret key: nope');
    expect(() =>
      buildPayload({ name: 'v', configMap: { name: 'cfg', items: [{ key: 'k', path: 'k' }] } }, pod, inputs()),
    ).toThrow('configmap references non-existent config key: k');
  });

  it('tolerates a missing optional object or key', () => {
    expect(buildPayload({ name: 'v', configMap: { name: 'gone', optional: true } }, pod, inputs()).size).toBe(0);
    const v: Volume = {
      name: 'v',
      configMap: {
        name: 'cfg',
        optional: true,
        items: [
          { key: 'k', path: 'k' },
          { key: 'other', path: 'o' },
        ],
      },
    };
    expect([...buildPayload(v, pod, inputs()).keys()]).toEqual(['o']);
  });

  it('fails a missing required ConfigMap with a typed error naming volume and object', () => {
    try {
      buildPayload({ name: 'agent-config', configMap: { name: 'cfg2' } }, pod, inputs());
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(VolumeSetupError);
      expect(err).toMatchObject({ volume: 'agent-config', reason: 'NotFound', message: 'configmap "cfg2" not found' });
    }
  });

  it('writes downward API fields, maps formatted as sorted key="value" lines', () => {
    const v: Volume = {
      name: 'info',
      downwardAPI: {
        items: [
          { path: 'name', fieldRef: { fieldPath: 'metadata.name' } },
          { path: 'labels', fieldRef: { fieldPath: 'metadata.labels' } },
          { path: 'a', fieldRef: { fieldPath: "metadata.labels['a']" } },
          { path: 'mem', resourceFieldRef: { containerName: 'c', resource: 'limits.memory', divisor: '1Mi' } },
        ],
      },
    };
    expect(files(buildPayload(v, pod, inputs()))).toEqual({
      name: ['agent-0', '644'],
      labels: ['a="x\\"y"\nb="2"', '644'],
      a: ['x"y', '644'],
      mem: ['64', '644'],
    });
    expect(formatMap({})).toBe('');
    expect(() =>
      buildPayload(
        { name: 'info', downwardAPI: { items: [{ path: 'ip', fieldRef: { fieldPath: 'status.podIP' } }] } },
        pod,
        inputs(),
      ),
    ).toThrow('fieldRef.fieldPath "status.podIP" is not supported in a downwardAPI volume');
  });

  it('merges projected sources into one directory with the token at its path', () => {
    const v: Volume = {
      name: 'kube-api-access',
      projected: {
        sources: [
          { serviceAccountToken: { audience: 'agentflow', path: 'token' } },
          { configMap: { name: 'cfg', items: [{ key: 'config.yaml', path: 'ca.crt' }] } },
          { downwardAPI: { items: [{ path: 'namespace', fieldRef: { fieldPath: 'metadata.namespace' } }] } },
        ],
      },
    };
    const refs = volumeReferences(v);
    expect(refs.configMaps).toEqual(['cfg']);
    expect(refs.tokens).toEqual([
      { key: tokenKey('kube-api-access', 0), source: { audience: 'agentflow', path: 'token' } },
    ]);
    const p = buildPayload(v, pod, inputs({ tokens: new Map([[tokenKey('kube-api-access', 0), 'jwt']]) }));
    expect(files(p)).toEqual({ token: ['jwt', '644'], 'ca.crt': ['a: 1', '644'], namespace: ['team', '644'] });
  });

  it('tells supported volume types from the rest', () => {
    expect(volumeType({ name: 'x', emptyDir: {} })).toBe('emptyDir');
    expect(volumeType({ name: 'x', hostPath: { path: '/' } })).toEqual({ unsupported: 'hostPath' });
  });

  it('rejects modes outside 0..0777', () => {
    expect(() => buildPayload({ name: 'v', configMap: { name: 'cfg', defaultMode: 0o1777 } }, pod, inputs())).toThrow(
      'defaultMode 1023 is not a file mode between 0 and 0777',
    );
  });
});

describe('atomic writer', () => {
  let dir = '';
  afterEach(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });
  const payload = (entries: Record<string, [string, number]>): Payload =>
    new Map(Object.entries(entries).map(([k, [d, mode]]) => [k, { data: Buffer.from(d), mode }]));

  it('publishes files through ..data and swaps it on change, removing stale names', () => {
    dir = mkdtempSync(join(tmpdir(), 'aw-'));
    expect(writeAtomically(dir, payload({ a: ['1', 0o644], 'sub/b': ['2', 0o400] }))).toBe(true);
    expect(readlinkSync(join(dir, 'a'))).toBe('..data/a');
    expect(readFileSync(join(dir, 'sub/b'), 'utf8')).toBe('2');
    expect(statSync(join(dir, 'sub/b')).mode & 0o777).toBe(0o400);
    const first = readlinkSync(join(dir, '..data'));

    expect(writeAtomically(dir, payload({ a: ['1', 0o644], 'sub/b': ['2', 0o400] }))).toBe(false);
    expect(readlinkSync(join(dir, '..data'))).toBe(first);

    expect(writeAtomically(dir, payload({ a: ['changed', 0o644] }))).toBe(true);
    expect(readlinkSync(join(dir, '..data'))).not.toBe(first);
    expect(readFileSync(join(dir, 'a'), 'utf8')).toBe('changed');
    expect(() => lstatSync(join(dir, 'sub'))).toThrow();
    expect(readdirSync(dir).filter((n) => n.startsWith('..2'))).toHaveLength(1);
  });

  it('refuses paths that leave the volume', () => {
    for (const bad of ['/abs', '../x', 'a/../b', '..hidden', '']) {
      expect(() => validatePayloadPath(bad)).toThrow(InvalidPayloadPathError);
    }
    validatePayloadPath('a/b.c');
  });
});

describe('token refresh', () => {
  const t: CachedToken = {
    token: 't',
    expiresAt: 10_000_000,
    expirationSeconds: 3600,
    fetchedAt: 10_000_000 - 3_600_000,
  };

  it('refreshes at 80% of the requested lifetime, like the kubelet', () => {
    expect(tokenNeedsRefresh(t, t.fetchedAt + 0.79 * 3_600_000)).toBe(false);
    expect(tokenNeedsRefresh(t, t.fetchedAt + 0.8 * 3_600_000)).toBe(true);
  });

  it('refreshes a token the API server extended after 24 h', () => {
    const year = { ...t, expiresAt: t.fetchedAt + 365 * 86_400_000 };
    expect(tokenNeedsRefresh(year, t.fetchedAt + 86_400_000 - 3_600_000 - 1)).toBe(false);
    // iat is counted back from the expiry by the requested lifetime, as the kubelet does
    expect(tokenNeedsRefresh(year, year.expiresAt - 3_600_000 + 86_400_000)).toBe(true);
  });

  it('also refreshes once the configured interval has passed', () => {
    expect(tokenNeedsRefresh(t, t.fetchedAt + 1_999, 2_000)).toBe(false);
    expect(tokenNeedsRefresh(t, t.fetchedAt + 2_000, 2_000)).toBe(true);
  });
});

describe('subPath', () => {
  it('expands subPathExpr and refuses paths out of the volume', () => {
    expect(subPathOf({ name: 'v', subPathExpr: 'logs/$(POD)' }, { POD: 'agent-0' })).toBe('logs/agent-0');
    expect(subPathOf({ name: 'v' }, {})).toBe('');
    expect(() => subPathOf({ name: 'v', subPath: '../etc' }, {})).toThrow("must be a relative path without '..'");
    expect(() => subPathOf({ name: 'v', subPath: '/etc' }, {})).toThrow('subPath "/etc" of volume "v"');
  });
});

describe('kube-api-access', () => {
  it('adds the token volume to every container that lacks a mount at the ServiceAccount path', () => {
    const p = withServiceAccountVolume(pod);
    expect(mountsServiceAccount(pod)).toBe(false);
    expect(mountsServiceAccount(p)).toBe(true);
    expect(p.spec.containers[0]?.volumeMounts).toEqual([
      { name: 'kube-api-access-kubelet', mountPath: SA_MOUNT_PATH, readOnly: true },
    ]);
    const sources = p.spec.volumes?.[0]?.projected?.sources ?? [];
    expect(sources.map((s) => Object.keys(s)[0])).toEqual(['serviceAccountToken', 'configMap', 'downwardAPI']);
  });
});

describe('mount plan', () => {
  // A fake host: / with etc (passwd, ssl/), run, var/run -> /run, tmp, and the kubelet dir.
  const tree: Record<string, 'dir' | 'file' | `->${string}`> = {
    '/': 'dir',
    '/etc': 'dir',
    '/etc/passwd': 'file',
    '/etc/ssl': 'dir',
    '/run': 'dir',
    '/run/lock': 'dir',
    '/var': 'dir',
    '/var/run': '->/run',
    '/tmp': 'dir',
    '/k': 'dir',
    '/k/pod': 'dir',
    '/k/pod/vol': 'dir',
    '/k/pod/vol/file': 'file',
    '/k/mounts': 'dir',
  };
  const fs: FsView = {
    kind: (p) => {
      const e = tree[p];
      if (!e) return 'missing';
      return e.startsWith('->') ? 'symlink' : (e as 'dir' | 'file');
    },
    readlink: (p) => (tree[p] as string).slice(2),
    list: (dir) =>
      Object.keys(tree)
        .filter(
          (p) => p !== dir && p.startsWith(dir === '/' ? '/' : `${dir}/`) && !p.slice(dir.length + 1).includes('/'),
        )
        .map((p) => ({ name: p.split('/').pop() as string, kind: fs.kind(p) as 'dir' | 'file' | 'symlink' })),
  };
  const opts = { owned: ['/k/pod', '/k/mounts'], staging: '/k/mounts/c', fs };
  const req = (mountPath: string, source = '/k/pod/vol', readOnly = false) => ({
    volume: 'v',
    mountPath,
    source,
    sourceKind: source.endsWith('file') ? ('file' as const) : ('dir' as const),
    readOnly,
  });

  it('binds over an existing directory without touching the host', () => {
    const plan = planMounts([req('/etc/ssl', '/k/pod/vol', true)], opts);
    expect(plan.hostOps).toEqual([]);
    expect(plan.steps).toEqual([
      {
        op: 'bind',
        source: '/k/pod/vol',
        target: '/etc/ssl',
        recursive: false,
        readOnly: true,
        what: 'volume "v" at /etc/ssl',
      },
    ]);
    expect(renderMountScript(plan, '/w')).toContain("mount -o remount,bind,ro -- '/etc/ssl'");
  });

  it('shadows the deepest existing ancestor of a missing mountPath, following symlinks', () => {
    const plan = planMounts([req('/var/run/secrets/agentflow')], opts);
    const s = '/k/mounts/c/shadow-1';
    expect(plan.hostOps).toEqual([
      { op: 'mkdir', path: s, like: '/run' },
      { op: 'mkdir', path: `${s}/lock` },
      { op: 'mkdir', path: `${s}/secrets` },
      { op: 'mkdir', path: `${s}/secrets/agentflow` },
    ]);
    expect(plan.steps.map((x) => (x.op === 'bind' ? `${x.source} -> ${x.target}` : `detach ${x.target}`))).toEqual([
      `${s} -> ${s}`,
      `/run/lock -> ${s}/lock`,
      `${s} -> /run`,
      `detach ${s}`,
      '/k/pod/vol -> /run/secrets/agentflow',
    ]);
    expect(plan.root).toBeUndefined();
  });

  it('creates a file placeholder for a file subPath and nested mounts inside a volume', () => {
    const plan = planMounts([req('/data/sub/x'), req('/etc/app/settings.yaml', '/k/pod/vol/file'), req('/data')], opts);
    expect(plan.root).toBe('/k/mounts/c/shadow-1');
    // /data shadows the root (chroot); /data/sub/x is then made inside the emptyDir itself.
    expect(plan.hostOps).toContainEqual({ op: 'mkdir', path: '/k/pod/vol/sub' });
    expect(plan.hostOps).toContainEqual({ op: 'touch', path: '/k/mounts/c/shadow-2/app/settings.yaml' });
    const binds = plan.steps.filter((x) => x.op === 'bind' && x.source.startsWith('/k/pod/vol'));
    expect(binds.map((b) => b.target)).toEqual([
      '/k/mounts/c/shadow-1/data',
      '/k/mounts/c/shadow-1/data/sub/x',
      '/k/mounts/c/shadow-1/etc/app/settings.yaml',
    ]);
    // The root shadow binds the entry leading to the staging area first.
    const firstBack = plan.steps.find((x) => x.op === 'bind' && x.target.startsWith('/k/mounts/c/shadow-1/'));
    expect(firstBack).toMatchObject({ source: '/k', target: '/k/mounts/c/shadow-1/k' });
    expect(renderMountScript(plan, '/w')).toContain("exec chroot -- '/k/mounts/c/shadow-1' /bin/sh -c");
  });

  it('refuses a directory volume over a host file and a path through a file', () => {
    expect(() => planMounts([req('/etc/passwd')], opts)).toThrow(MountPlanError);
    expect(() => planMounts([req('/etc/passwd')], opts)).toThrow(
      'volume "v" at /etc/passwd: the node has a file there and the volume is a directory',
    );
    expect(() => planMounts([req('/etc/passwd/x')], opts)).toThrow('/etc/passwd is a file, not a directory');
    expect(() => planMounts([req('relative')], opts)).toThrow('mountPath must be absolute');
  });

  it('quotes paths in the script and execs the command last', () => {
    const plan = planMounts([req("/etc/it's")], opts);
    const script = renderMountScript(plan, '/w');
    expect(script).toContain(`'/etc/it'\\''s'`);
    expect(script.trimEnd().split('\n').slice(-2)).toEqual(['exec 3>&-', 'exec "$@"']);
  });
});
