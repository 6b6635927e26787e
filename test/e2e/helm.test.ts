import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CRD_NAMES } from '../../src/api/crds.ts';
import { installAgentflow } from '../cluster/agentflow-install.ts';
import { binaryPath } from '../cluster/binaries.ts';
import type { ClusterHandle } from '../cluster/cluster-handle.ts';
import { agentflowImage, etcdImage } from '../cluster/node-images.ts';
import { firewalled } from '../cluster/pod-network.ts';
import { RealNode } from '../cluster/real-node.ts';
import { testCluster, uniqueName } from '../cluster/testing.ts';
import { until } from '../integration/operator/helpers.ts';
import { dial, probeCommand, probeGate } from './dial.ts';

// `helm install` of the chart exactly as users run it, on real nodes of the local control plane
// (test/cluster/real-node.ts: containerd, the pod network, Services, cluster DNS): the image built
// from the Dockerfile, the bundled etcd StatefulSet on a PersistentVolume, its Services and DNS
// names, the dispatcher Service, TLS, the shipped RBAC and probes. Then the README example to
// Succeeded by running the README's own commands as written, then `helm uninstall`: no agentflow
// pods left, the CRDs kept.

// biome-ignore lint/suspicious/noExplicitAny: raw API JSON
type Json = Record<string, any>;

let cluster: ClusterHandle;
const release = 'af';
const namespace = uniqueName('agentflow');
let examples: string;

async function kubectl(args: string[]): Promise<string> {
  const r = await cluster.kubectl(args);
  if (r.code !== 0) throw new Error(`kubectl ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

/** The command lines of README's sh block that starts with `first` (comments and blank lines dropped). */
function readmeCommands(first: string): string[] {
  const blocks = [...readFileSync('README.md', 'utf8').matchAll(/^```sh\n([\s\S]*?)^```/gm)].map((m) => m[1] ?? '');
  const block = blocks.find((b) => b.startsWith(first));
  if (!block) throw new Error(`README.md has no sh block starting with ${first}`);
  return block
    .split('\n')
    .map((l) => l.replace(/\s+#.*$/, '').trim())
    .filter((l) => l && !l.startsWith('#'));
}

/**
 * Runs one README command line with bash, kubectl on PATH and the cluster's
 * kubeconfig. A watch (`-w`) never exits by itself: it passes once its
 * output shows `until`, and is then stopped.
 */
function runAsWritten(line: string, until?: RegExp): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', ['-c', line], {
      env: {
        PATH: `${dirname(binaryPath('kubectl'))}:${process.env.PATH ?? ''}`,
        KUBECONFIG: cluster.info.kubeconfig,
        HOME: process.env.HOME ?? '',
      },
      detached: true,
    });
    let out = '';
    const timer = setTimeout(() => {
      process.kill(-(child.pid as number), 'SIGKILL');
      reject(new Error(`"${line}" did not finish in 180 s; output:\n${out}`));
    }, 180_000);
    const onData = (b: Buffer) => {
      out += b.toString();
      if (until?.test(out)) process.kill(-(child.pid as number), 'SIGTERM');
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code: until?.test(out) ? 0 : code, out });
    });
  });
}

const releasePods = async () =>
  (
    await cluster.client.get<{ items: Json[] }>(
      `/api/v1/namespaces/${namespace}/pods?labelSelector=${encodeURIComponent(`app.kubernetes.io/instance=${release}`)}`,
    )
  ).items;

let realNodes: RealNode[] = [];

beforeAll(async () => {
  cluster = testCluster();
  if (cluster.info.external) return; // its own nodes run the image
  // Two real nodes that take any pod, as a user's do, with the images the chart names already in
  // their containerd (there is no registry here): the Dockerfile's and etcd's.
  const images = [await agentflowImage(), await etcdImage()];
  const group = uniqueName('helm');
  realNodes = await Promise.all(
    ['a', 'b'].map((suffix) => RealNode.start(cluster, { name: `${group}-${suffix}`, images, taint: false })),
  );
  // The bundled etcd's volume, reserved for its member's claim, as an administrator of a cluster
  // without a provisioner would.
  await realNodes[0]?.hostPathVolume(`${group}-etcd-0`, '1Gi', { namespace, name: `data-${release}-agentflow-etcd-0` });
}, 900_000);

afterAll(async () => {
  await cluster.kubectl(['delete', 'namespace', examples, '--wait=false']);
  for (const n of realNodes) await n.stop();
  await cluster.close();
});

describe('helm install', () => {
  it('installs the operator (ready, one leader) and runs the example workflow to Succeeded', async () => {
    await installAgentflow(cluster, { release, namespace, realNodes: !cluster.info.external });
    const pods = (await releasePods()).filter((p) => p.metadata.labels?.['app.kubernetes.io/component'] === 'operator');
    expect(pods).toHaveLength(2);
    if (!cluster.info.external) {
      // The bundled etcd, on its volume: the chart as shipped, not the harness's etcd.
      const etcd = await cluster.client.get<Json>(`/api/v1/namespaces/${namespace}/pods/${release}-agentflow-etcd-0`);
      expect(etcd.status.conditions.some((c: Json) => c.type === 'Ready' && c.status === 'True')).toBe(true);
      const claim = await cluster.client.get<Json>(
        `/api/v1/namespaces/${namespace}/persistentvolumeclaims/data-${release}-agentflow-etcd-0`,
      );
      expect(claim.status.phase).toBe('Bound');
    }
    expect(pods.every((p) => p.status?.conditions?.some((c: Json) => c.type === 'Ready' && c.status === 'True'))).toBe(
      true,
    );
    // Backups are on by default, and `helm --wait` did not wait for their claim to bind.
    expect((await kubectl(['get', 'cronjob', '-n', namespace, '-o', 'name'])).trim()).toBe(
      `cronjob.batch/${release}-agentflow-backup`,
    );
    await until(
      'a leader label',
      releasePods,
      (ps) => ps.filter((p) => p.metadata.labels?.['agentflow.io/role'] === 'leader').length === 1,
      30_000,
    );

    // README's quick start, each command exactly as written (its namespace is `research`).
    examples = 'research';
    const outputs: string[] = [];
    for (const line of readmeCommands('kubectl create namespace research')) {
      const r = await runAsWritten(line, / -w\b/.test(line) ? /research-report\s+Succeeded/ : undefined);
      expect(r.code, `${line}\n${r.out}`).toBe(0);
      outputs.push(r.out);
    }
    expect(JSON.parse(outputs.at(-1) ?? '').title).toBe('Report: warm agent pools');
    const wf = await until(
      'research-report finished',
      () => cluster.client.get<Json>(`/apis/agentflow.io/v1alpha1/namespaces/${examples}/workflows/research-report`),
      (w) => ['Succeeded', 'Failed'].includes(w.status?.phase),
      180_000,
    );
    expect(wf.status.phase).toBe('Succeeded');
    expect(wf.status.outputs.write.sections).toHaveLength(3);
  });

  it('runs the README’s agent example as written: streamed draft, usage, approval, publish', async () => {
    const out: string[] = [];
    for (const line of readmeCommands('npx agentflow submit -n research -f deploy/examples/workflow-review.yaml')) {
      const r = await runAsWritten(line);
      expect(r.code, `${line}\n${r.out}`).toBe(0);
      out.push(r.out);
    }
    const [submitted, streamed, , approvals, described, approved, watched] = out;
    expect(submitted).toContain('workflow.agentflow.io/review-notes created');
    expect(streamed).toMatch(/^warm agent pools stay warm so tasks .*\.\n$/);
    expect(approvals).toContain('Publish "Notes on warm agent pools" (40 words)?');
    expect(described).toMatch(/Usage:\s+68 tokens \(28 in, 40 out\), \$0\.000136/);
    expect(approved).toContain('task review of workflow review-notes approved by');
    expect(watched).toMatch(/workflow\/review-notes Succeeded/);
  });

  it('enforces the chart’s NetworkPolicies: a pod outside the chart reaches neither etcd nor the dispatcher', async () => {
    if (cluster.info.external) return; // enforcement is up to that cluster's CNI
    const pods = await releasePods();
    const leader = pods.find((p) => p.metadata.labels?.['agentflow.io/role'] === 'leader');
    const etcd = pods.find((p) => p.metadata.labels?.['app.kubernetes.io/component'] === 'etcd');
    const service = async (name: string) =>
      (await cluster.client.get<Json>(`/api/v1/namespaces/${namespace}/services/${name}`)).spec.clusterIP as string;
    const port = (name: string) =>
      leader?.spec.containers[0].ports.find((p: Json) => p.name === name)?.containerPort as number;
    const targets = {
      'etcd client port': { host: etcd?.status.podIP, port: 2379 },
      'etcd peer port': { host: etcd?.status.podIP, port: 2380 },
      'etcd Service': { host: await service(`${release}-agentflow-etcd`), port: 2379 },
      'dispatcher Service': { host: await service(`${release}-agentflow-dispatcher`), port: port('dispatcher') },
      'operator ops port': { host: leader?.status.podIP, port: port('ops') },
      // Open to any source (the API server that fronts it is no pod): what shows the probes' network works.
      'data API port': { host: leader?.status.podIP, port: port('data-api') },
    };
    // Every one listens: from this machine (which kube-router, as any node's, always lets through).
    for (const [what, t] of Object.entries(targets)) expect(await dial(t.host, t.port), what).toBe('open');
    // kube-router has written the etcd and leader pods' rules (with the policies selecting them).
    for (const p of [etcd, leader]) {
      await until(
        `kube-router's rules for ${p?.metadata.name}`,
        () => firewalled(namespace, p?.metadata.name),
        Boolean,
        60_000,
      );
    }
    // One pod with no label the policies name, one labelled as an agent is (in a namespace of its
    // own, on the other node from etcd's: the path between two real nodes).
    const outside = uniqueName('outside');
    await kubectl(['create', 'namespace', outside]);
    const image = await agentflowImage();
    // Each probe dials once kube-router has its address (an agent's in the dispatcher policy's set).
    const gate = await probeGate((pod) =>
      until(`kube-router's rules for ${outside}/${pod}`, () => firewalled(outside, pod), Boolean, 60_000),
    );
    const probe = async (name: string, labels: Record<string, string>) => {
      await cluster.client.post(`/api/v1/namespaces/${outside}/pods`, {
        metadata: { name, labels },
        spec: {
          nodeName: realNodes.find((n) => n.name !== etcd?.spec.nodeName)?.name,
          automountServiceAccountToken: false,
          restartPolicy: 'Never',
          containers: [
            {
              name: 'probe',
              image: image.ref,
              imagePullPolicy: 'Never',
              command: probeCommand(targets, gate),
              securityContext: { runAsNonRoot: true, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } },
            },
          ],
        },
      });
      const done = await until(
        `probe ${name} finished`,
        () => cluster.client.get<Json>(`/api/v1/namespaces/${outside}/pods/${name}`),
        (p) => ['Succeeded', 'Failed'].includes(p.status?.phase),
        120_000,
      );
      const log = await kubectl(['logs', '-n', outside, name]);
      expect(done.status.phase, `${log} ${gate.refused.get(name) ?? ''}`).toBe('Succeeded');
      return JSON.parse(log) as Record<keyof typeof targets, string>;
    };
    try {
      expect(await probe('stranger', { app: 'stranger' })).toEqual({
        'etcd client port': 'blocked',
        'etcd peer port': 'blocked',
        'etcd Service': 'blocked',
        'dispatcher Service': 'blocked',
        'operator ops port': 'blocked',
        'data API port': 'open',
      });
      // An agent (any namespace) reaches the dispatcher, and still not etcd.
      expect(await probe('agent', { 'agentflow.io/pool': 'not-a-pool' })).toEqual({
        'etcd client port': 'blocked',
        'etcd peer port': 'blocked',
        'etcd Service': 'blocked',
        'dispatcher Service': 'open',
        'operator ops port': 'blocked',
        'data API port': 'open',
      });
    } finally {
      await gate.close();
      await kubectl(['delete', 'namespace', outside, '--wait=false']);
    }
  });

  it('a node whose every container is killed mid-run: the workflow still Succeeds, no result lost', async () => {
    if (cluster.info.external) return; // needs this machine's containerd
    const questions = 1_500;
    const wf = readFileSync('deploy/examples/workflow-research.yaml', 'utf8')
      .replace('name: research-report', 'name: research-crash')
      .replace('questions: 3', `questions: ${questions}`);
    const applied = await cluster.kubectl(['apply', '-n', examples, '-f', '-'], { input: wf });
    expect(applied.code, applied.stderr).toBe(0);
    const path = `/apis/agentflow.io/v1alpha1/namespaces/${examples}/workflows/research-crash`;
    await until(
      'research-crash half-way',
      () => cluster.client.get<Json>(path),
      (w) => (w.status?.progress?.succeeded ?? 0) >= questions / 4,
      120_000,
    );
    // The node the leading operator runs on: everything there dies at once (with etcd, if it is there).
    const leader = (await releasePods()).find((p) => p.metadata.labels?.['agentflow.io/role'] === 'leader');
    const victim = realNodes.find((n) => n.name === leader?.spec.nodeName);
    expect(victim, `leader ${leader?.metadata.name} on ${leader?.spec.nodeName}`).toBeDefined();
    const before = (await cluster.client.get<Json>(path)).status;
    expect(before.phase, JSON.stringify(before)).toBe('Running');
    expect(await victim?.killContainers()).toBeGreaterThan(0);
    const done = await until(
      'research-crash finished',
      () => cluster.client.get<Json>(path),
      (w) => ['Succeeded', 'Failed'].includes(w.status?.phase),
      240_000,
    );
    expect(done.status.phase, JSON.stringify(done.status)).toBe('Succeeded');
    // plan, every question, write: all succeeded, none failed (a lost result would leave one short).
    expect(done.status.progress).toMatchObject({ total: questions + 2, succeeded: questions + 2, failed: 0 });
    // The kubelet restarted what was killed: the leader's containers have a restart (or a new sandbox).
    const again = await cluster.client.get<Json>(`/api/v1/namespaces/${namespace}/pods/${leader?.metadata.name}`);
    expect(again.status.containerStatuses?.[0]?.restartCount ?? 0).toBeGreaterThan(0);
  });

  it('helm uninstall leaves no agentflow pods behind and keeps the CRDs', async () => {
    // Users delete their pools and workflows first (the operator finalizes them); then uninstall.
    await kubectl(['delete', 'workflows,agentpools', '--all', '-n', examples, '--wait=true', '--timeout=60s']);
    const r = await cluster.helm(['uninstall', release, '--namespace', namespace, '--wait', '--timeout', '120s']);
    expect(r.code).toBe(0);
    await until('the operator pods gone', releasePods, (ps) => ps.length === 0, 60_000);
    const agentPods = await cluster.client.get<{ items: Json[] }>(
      `/api/v1/namespaces/${examples}/pods?labelSelector=agentflow.io%2Fpool`,
    );
    expect(agentPods.items.filter((p) => !p.metadata.deletionTimestamp)).toEqual([]);
    // The backups' claim outlives the release (with no provisioner here it never bound).
    const claims = await cluster.client.get<{ items: Json[] }>(
      `/api/v1/namespaces/${namespace}/persistentvolumeclaims?labelSelector=app.kubernetes.io%2Fcomponent%3Dbackup`,
    );
    expect(claims.items.map((c) => c.metadata.name)).toEqual([`${release}-agentflow-backup`]);
    for (const crd of CRD_NAMES) {
      expect((await cluster.kubectl(['get', 'crd', crd, '-o', 'name'])).stdout.trim()).toBe(
        `customresourcedefinition.apiextensions.k8s.io/${crd}`,
      );
    }
  });
});
