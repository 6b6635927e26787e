import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { KubeError, type RestClient } from '../rest.ts';
import { ContainerRunner } from './container.ts';
import { apiLookup, EnvError, expand, resolveEnv } from './env.ts';
import { prepareMountNamespace } from './mount-namespace.ts';
import { PodVolumes } from './pod-volumes.ts';
import { type AutomountDecision, decideAutomount, withServiceAccountVolume } from './service-account.ts';
import type { Container, ContainerStatus, Pod, PodCondition, PodStatus } from './types.ts';
import { containerMountRequests } from './volume-mounts.ts';
import type { VolumeSetupError } from './volume-payload.ts';

/** How an image with no `command` in the container maps to a local entry point. */
export interface ImageEntry {
  entrypoint: string[];
  /** Default args (the image's CMD), used when the container sets no args. */
  args?: string[];
  /** Extra environment the local entry point needs (e.g. PATH to a toolchain). */
  env?: Record<string, string>;
  /** The image's WORKDIR: where its processes start unless the container sets workingDir. */
  workingDir?: string;
}

export interface PodWorkerContext {
  client: RestClient;
  podsDir: string;
  apiServer: { host: string; port: number; caFile: string };
  images: Record<string, ImageEntry>;
  backoffBaseMs: number;
  backoffMaxMs: number;
  /** Staging root for mount namespaces (outside every pod directory). */
  mountsDir: string;
  /** How often ConfigMap, Secret and downwardAPI volume content is re-read. */
  volumeSyncMs: number;
  /** Also renew projected tokens once they are this old. */
  tokenRefreshMs?: number;
  hostIP: string;
  event(pod: Pod, type: 'Normal' | 'Warning', reason: string, message: string): void;
  onGone(uid: string): void;
}

const now = () => new Date().toISOString();

/**
 * Runs one pod bound to a process-kubelet node, from admission to deletion,
 * and reports its status through pods/status as a kubelet does.
 */
export class PodWorker {
  readonly uid: string;
  private pod: Pod;
  private readonly dir: string;
  private init: ContainerRunner[] = [];
  private main: ContainerRunner[] = [];
  private waitingReasons = new Map<string, { reason: string; message: string }>();
  private initialized = false;
  private terminating: Promise<void> | undefined;
  private gone = false;
  private rejected: { reason: string; message: string } | undefined;
  private readonly startTime = now();
  private transitions = new Map<string, { status: string; at: string }>();
  private syncing = false;
  private syncAgain = false;
  private readonly volumes: PodVolumes;
  private automount: AutomountDecision | undefined;
  private volumesReady = false;
  private refreshTimer: NodeJS.Timeout | undefined;
  /** Last FailedMount message per volume, so a retry loop does not flood Events. */
  private readonly mountErrors = new Map<string, { message: string; at: number }>();

  readonly podIP: string;
  private readonly ctx: PodWorkerContext;

  constructor(pod: Pod, podIP: string, ctx: PodWorkerContext) {
    this.podIP = podIP;
    this.ctx = ctx;
    this.pod = pod;
    this.uid = pod.metadata.uid as string;
    this.dir = join(ctx.podsDir, `${pod.metadata.namespace}_${pod.metadata.name}_${this.uid}`);
    mkdirSync(this.dir, { recursive: true });
    this.volumes = new PodVolumes(pod, {
      client: ctx.client,
      dir: this.dir,
      ...(ctx.tokenRefreshMs !== undefined ? { tokenRefreshMs: ctx.tokenRefreshMs } : {}),
    });
  }

  /** The pod's staging directory for mount namespaces: never inside what its containers can see. */
  private get stagingDir(): string {
    return join(this.ctx.mountsDir, this.uid);
  }

  /** The pod with the kube-api-access volume added when the API server did not add it. */
  private effectivePod(pod: Pod): Pod {
    return this.automount?.inject ? withServiceAccountVolume(pod) : pod;
  }

  get namespace(): string {
    return this.pod.metadata.namespace ?? 'default';
  }
  get name(): string {
    return this.pod.metadata.name;
  }
  get nodeName(): string {
    return this.pod.spec.nodeName as string;
  }
  get spec(): Pod['spec'] {
    return this.pod.spec;
  }
  /** Non-terminal pods count against the node's allocatable. */
  get active(): boolean {
    return !this.rejected && !this.gone && !this.isTerminalPhase();
  }

  /** Refuses the pod at admission (e.g. the node lacks the resources). */
  async reject(reason: string, message: string): Promise<void> {
    this.rejected = { reason, message };
    this.ctx.event(this.pod, 'Warning', reason, message);
    await this.syncStatus();
  }

  update(pod: Pod): void {
    this.pod = pod;
    this.volumes.update(this.effectivePod(pod));
    if (pod.metadata.deletionTimestamp) void this.terminate();
  }

  /** The pod object vanished (force deletion): stop the processes at once. */
  async vanished(): Promise<void> {
    this.gone = true;
    await Promise.all([...this.init, ...this.main].map((c) => c.terminate(2_000)));
    this.tearDownVolumes();
    this.ctx.onGone(this.uid);
  }

  async run(): Promise<void> {
    if (this.pod.metadata.deletionTimestamp) return this.terminate();
    await this.syncStatus();
    let env: NodeJS.ProcessEnv;
    try {
      this.automount ??= await decideAutomount(this.pod, this.ctx.client);
      this.volumes.update(this.effectivePod(this.pod));
      if (!(await this.mountVolumes())) return;
      env = await this.baseEnv();
    } catch (err) {
      // e.g. the ServiceAccount does not exist yet: retry, like the kubelet.
      for (const c of this.pod.spec.containers) {
        this.waitingReasons.set(c.name, { reason: 'CreateContainerConfigError', message: (err as Error).message });
      }
      await this.syncStatus();
      if (!this.pod.metadata.deletionTimestamp && !this.gone) setTimeout(() => void this.run(), 1_000);
      return;
    }

    for (const c of this.pod.spec.initContainers ?? []) {
      if (this.terminating || this.gone) return;
      const runner = await this.makeRunner(c, env, 'init');
      if (!runner) return;
      this.init.push(runner);
      runner.start();
      const t = await runner.finished();
      if (!t || t.exitCode !== 0) {
        if (this.pod.spec.restartPolicy === 'Never') {
          await this.syncStatus();
          return;
        }
        // Always/OnFailure: the real kubelet retries the init container; keep it simple and visible.
        this.init.pop();
        await new Promise((r) => setTimeout(r, this.ctx.backoffBaseMs));
        return this.run();
      }
    }
    this.initialized = true;
    for (const c of this.pod.spec.containers) {
      if (this.terminating || this.gone) return;
      const runner = await this.makeRunner(c, env, 'main');
      if (runner) {
        this.main.push(runner);
        runner.start();
      }
    }
    await this.syncStatus();
  }

  /** Graceful deletion: SIGTERM, wait the grace period, SIGKILL, then remove the pod object. */
  terminate(): Promise<void> {
    this.terminating ??= (async () => {
      const grace =
        (this.pod.metadata.deletionGracePeriodSeconds ?? this.pod.spec.terminationGracePeriodSeconds ?? 30) * 1000;
      await Promise.all([...this.init, ...this.main].map((c) => c.terminate(grace)));
      this.tearDownVolumes();
      for (const c of this.pod.spec.containers) {
        if (!this.main.some((r) => r.name === c.name)) this.waitingReasons.delete(c.name);
      }
      await this.syncStatus().catch(() => undefined);
      try {
        await this.ctx.client.delete(`/api/v1/namespaces/${this.namespace}/pods/${this.name}`, {
          gracePeriodSeconds: 0,
          preconditions: { uid: this.uid },
        });
      } catch (err) {
        if (!(err instanceof KubeError && (err.status === 404 || err.status === 409))) throw err;
      }
      this.gone = true;
      this.ctx.onGone(this.uid);
    })();
    return this.terminating;
  }

  /** Signals a container's processes (tests simulate crashes with this). */
  kill(container: string | undefined, signal: NodeJS.Signals): boolean {
    const r = container ? this.main.find((c) => c.name === container) : this.main[0];
    return r?.kill(signal) ?? false;
  }

  pid(container?: string): number | undefined {
    return (container ? this.main.find((c) => c.name === container) : this.main[0])?.pid;
  }

  logPath(container?: string, previous = false): string | undefined {
    const r = container ? [...this.main, ...this.init].find((c) => c.name === container) : this.main[0];
    if (!r) return undefined;
    const run = previous ? r.restartCount - 1 : r.restartCount;
    return run < 0 ? undefined : join(this.dir, r.name, `${run}.log`);
  }

  /** Whether a container may still write output (for `kubectl logs -f`). */
  isRunning(container: string): boolean {
    const r = [...this.main, ...this.init].find((c) => c.name === container);
    return r !== undefined && !r.isTerminal && !this.gone;
  }

  logs(container?: string): string {
    const path = this.logPath(container);
    if (!path) return '';
    try {
      return readFileSync(path, 'utf8');
    } catch {
      return '';
    }
  }

  private async makeRunner(
    c: Container,
    base: NodeJS.ProcessEnv,
    kind: 'init' | 'main',
  ): Promise<ContainerRunner | undefined> {
    let argv: string[];
    let containerEnv: Record<string, string>;
    let imageEnv: Record<string, string> = {};
    let workingDir: string | undefined;
    let mounts: ReturnType<typeof containerMountRequests>;
    const spec = this.effectiveContainer(c, kind);
    try {
      containerEnv = await resolveEnv(this.pod, c, apiLookup(this.ctx.client), this.podIP, this.ctx.hostIP);
      const resolved = this.argv(c, containerEnv);
      argv = resolved.argv;
      imageEnv = resolved.env;
      workingDir = c.workingDir ?? resolved.workingDir;
      mounts = containerMountRequests(spec, containerEnv, (name) => this.volumes.hostDir(name));
    } catch (err) {
      const reason = err instanceof EnvError ? err.reason : 'CreateContainerError';
      this.waitingReasons.set(c.name, { reason, message: (err as Error).message });
      this.ctx.event(this.pod, 'Warning', 'Failed', `Error: ${(err as Error).message}`);
      await this.syncStatus();
      return undefined;
    }
    this.waitingReasons.delete(c.name);
    const policy = this.pod.spec.restartPolicy ?? 'Always';
    return new ContainerRunner({
      container: c,
      argv,
      env: { ...base, ...imageEnv, ...containerEnv },
      cwd: workingDir ?? this.dir,
      logDir: join(this.dir, c.name),
      podIP: this.podIP,
      restartPolicy: kind === 'init' ? 'Never' : policy,
      backoffBaseMs: this.ctx.backoffBaseMs,
      backoffMaxMs: this.ctx.backoffMaxMs,
      terminationGraceMs: (this.pod.spec.terminationGracePeriodSeconds ?? 30) * 1000,
      onChange: () => void this.syncStatus(),
      onEvent: (type, reason, message) => this.ctx.event(this.pod, type, reason, message),
      ...(mounts.length > 0
        ? {
            mountNamespace: (command: string[], cwd: string) =>
              prepareMountNamespace({
                requests: mounts,
                owned: [this.dir, this.stagingDir],
                staging: join(this.stagingDir, c.name),
                workingDir: cwd,
                argv: command,
              }).argv,
          }
        : {}),
    });
  }

  /** The container as the kubelet runs it (with the kube-api-access mount when the kubelet injected it). */
  private effectiveContainer(c: Container, kind: 'init' | 'main'): Container {
    const spec = this.effectivePod(this.pod).spec;
    const list = kind === 'init' ? (spec.initContainers ?? []) : spec.containers;
    return list.find((x) => x.name === c.name) ?? c;
  }

  /**
   * Sets up every volume before any container starts, as the kubelet's volume
   * manager does: while one fails, the pod stays ContainerCreating with a
   * FailedMount event, and set-up is retried. False when the pod went away meanwhile.
   */
  private async mountVolumes(): Promise<boolean> {
    let delay = 250;
    for (;;) {
      if (this.terminating || this.gone || this.pod.metadata.deletionTimestamp) return false;
      this.reportMountErrors(await this.volumes.sync(true));
      if (this.volumes.allReady) break;
      for (const c of [...(this.pod.spec.initContainers ?? []), ...this.pod.spec.containers]) {
        this.waitingReasons.set(c.name, { reason: 'ContainerCreating', message: '' });
      }
      await this.syncStatus();
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 2_000);
    }
    if (!this.volumesReady) {
      this.volumesReady = true;
      for (const c of [...(this.pod.spec.initContainers ?? []), ...this.pod.spec.containers]) {
        this.waitingReasons.delete(c.name);
      }
      this.scheduleVolumeRefresh();
    }
    return true;
  }

  /**
   * Keeps volumes fresh while the pod runs: ConfigMaps, Secrets and downward
   * API fields every volumeSyncMs, projected tokens whenever they are due
   * (checked at least as often as tokenRefreshMs).
   */
  private scheduleVolumeRefresh(): void {
    if (this.refreshTimer || !this.volumes.refreshes) return;
    const period = Math.max(200, Math.min(this.ctx.volumeSyncMs, this.ctx.tokenRefreshMs ?? Number.POSITIVE_INFINITY));
    let fetchedAt = Date.now();
    const tick = async () => {
      // A finished pod's containers read nothing any more: stop calling the API for it.
      if (this.gone || this.terminating || this.isTerminalPhase()) return;
      const refetch = Date.now() - fetchedAt >= this.ctx.volumeSyncMs;
      if (refetch) fetchedAt = Date.now();
      this.reportMountErrors(await this.volumes.sync(refetch));
      if (!this.gone && !this.terminating) this.refreshTimer = setTimeout(() => void tick(), period);
    };
    this.refreshTimer = setTimeout(() => void tick(), period);
  }

  private reportMountErrors(errors: VolumeSetupError[]): void {
    const failing = new Set(errors.map((e) => e.volume));
    for (const v of this.mountErrors.keys()) if (!failing.has(v)) this.mountErrors.delete(v);
    for (const e of errors) {
      const message = `MountVolume.SetUp failed for volume "${e.volume}" : ${e.message}`;
      const last = this.mountErrors.get(e.volume);
      if (last && last.message === message && Date.now() - last.at < 30_000) continue;
      this.mountErrors.set(e.volume, { message, at: Date.now() });
      this.ctx.event(this.pod, 'Warning', 'FailedMount', message);
    }
  }

  /** The pod is done on this node: its token, secret and scratch files go with it. */
  private tearDownVolumes(): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
    this.volumes.remove();
    rmSync(this.stagingDir, { recursive: true, force: true });
  }

  /** command/args from the container, else the image's mapped entry point; $(VAR) expanded. */
  private argv(
    c: Container,
    env: Record<string, string>,
  ): { argv: string[]; env: Record<string, string>; workingDir?: string } {
    const x = (s: string) => expand(s, env);
    const image = c.image ?? '';
    const entry = this.ctx.images[image] ?? this.ctx.images[stripTag(image)];
    const wd = entry?.workingDir ? { workingDir: entry.workingDir } : {};
    if (c.command?.length) return { argv: [...c.command, ...(c.args ?? [])].map(x), env: {}, ...wd };
    if (!entry) {
      throw new EnvError(
        'ErrImagePull',
        `image "${image}" has no local entry point in the process kubelet and container "${c.name}" sets no command`,
      );
    }
    return { argv: [...entry.entrypoint, ...(c.args ?? entry.args ?? [])].map(x), env: entry.env ?? {}, ...wd };
  }

  /** Environment every container starts from: host PATH, service links to the API server, SA kubeconfig. */
  private async baseEnv(): Promise<NodeJS.ProcessEnv> {
    const { host, port, caFile } = this.ctx.apiServer;
    const env: NodeJS.ProcessEnv = {
      PATH: process.env.PATH,
      HOME: this.dir,
      HOSTNAME: this.pod.spec.hostname ?? this.name,
      KUBERNETES_SERVICE_HOST: host,
      KUBERNETES_SERVICE_PORT: String(port),
      KUBERNETES_SERVICE_PORT_HTTPS: String(port),
      KUBERNETES_PORT: `tcp://${host}:${port}`,
    };
    if (!this.automount?.automount) return env;
    // Besides the mounted kube-api-access token, the harness hands processes a
    // kubeconfig with a bound token (KUBECONFIG), which tools and tests that
    // run outside a mount namespace (or predate volume support) rely on.
    const sa = this.pod.spec.serviceAccountName ?? 'default';
    const tr = await this.ctx.client.post<{ status: { token: string } }>(
      `/api/v1/namespaces/${this.namespace}/serviceaccounts/${sa}/token`,
      {
        apiVersion: 'authentication.k8s.io/v1',
        kind: 'TokenRequest',
        spec: {
          expirationSeconds: 86_400,
          boundObjectRef: { apiVersion: 'v1', kind: 'Pod', name: this.name, uid: this.uid },
        },
      },
    );
    const saDir = join(this.dir, 'serviceaccount');
    mkdirSync(saDir, { recursive: true });
    writeFileSync(join(saDir, 'token'), tr.status.token, { mode: 0o600 });
    writeFileSync(join(saDir, 'namespace'), this.namespace);
    const ca = readFileSync(caFile);
    writeFileSync(join(saDir, 'ca.crt'), ca);
    const kubeconfig = join(saDir, 'kubeconfig');
    writeFileSync(
      kubeconfig,
      stringify({
        apiVersion: 'v1',
        kind: 'Config',
        clusters: [
          {
            name: 'in-cluster',
            cluster: { server: `https://${host}:${port}`, 'certificate-authority-data': ca.toString('base64') },
          },
        ],
        users: [{ name: `system:serviceaccount:${this.namespace}:${sa}`, user: { token: tr.status.token } }],
        contexts: [
          {
            name: 'in-cluster',
            context: {
              cluster: 'in-cluster',
              user: `system:serviceaccount:${this.namespace}:${sa}`,
              namespace: this.namespace,
            },
          },
        ],
        'current-context': 'in-cluster',
      }),
      { mode: 0o600 },
    );
    env.KUBECONFIG = kubeconfig;
    env.AGENTFLOW_SERVICEACCOUNT_DIR = saDir;
    return env;
  }

  private isTerminalPhase(): boolean {
    const p = this.computePhase();
    return p === 'Succeeded' || p === 'Failed';
  }

  private computePhase(): NonNullable<PodStatus['phase']> {
    if (this.rejected) return 'Failed';
    const initFailed = this.init.some((c) => c.isTerminal && c.state.terminated?.exitCode !== 0);
    if (initFailed && this.pod.spec.restartPolicy === 'Never') return 'Failed';
    if (!this.initialized || this.main.length < this.pod.spec.containers.length) return 'Pending';
    if (this.main.some((c) => !c.isTerminal)) return 'Running';
    return this.main.every((c) => c.state.terminated?.exitCode === 0) ? 'Succeeded' : 'Failed';
  }

  private condition(type: string, ok: boolean, reason?: string): PodCondition {
    const status = ok ? 'True' : 'False';
    const prev = this.transitions.get(type);
    if (!prev || prev.status !== status) this.transitions.set(type, { status, at: now() });
    return {
      type,
      status,
      lastProbeTime: null,
      lastTransitionTime: this.transitions.get(type)?.at as string,
      ...(reason && !ok ? { reason } : {}),
    };
  }

  private containerStatuses(specs: Container[], runners: ContainerRunner[]): ContainerStatus[] {
    return specs.map((c) => {
      const r = runners.find((x) => x.name === c.name);
      if (r) return r.status();
      const w = this.waitingReasons.get(c.name) ?? { reason: 'PodInitializing', message: '' };
      return {
        name: c.name,
        image: c.image ?? '',
        imageID: '',
        ready: false,
        started: false,
        restartCount: 0,
        state: { waiting: w.message ? w : { reason: w.reason } },
        lastState: {},
      };
    });
  }

  private buildStatus(): PodStatus {
    if (this.rejected) {
      return {
        phase: 'Failed',
        reason: this.rejected.reason,
        message: this.rejected.message,
        startTime: this.startTime,
      };
    }
    const phase = this.computePhase();
    const containers = this.containerStatuses(this.pod.spec.containers, this.main);
    const allReady = containers.length > 0 && containers.every((c) => c.ready) && phase === 'Running';
    const status: PodStatus = {
      phase,
      hostIP: this.ctx.hostIP,
      hostIPs: [{ ip: this.ctx.hostIP }],
      podIP: this.podIP,
      podIPs: [{ ip: this.podIP }],
      startTime: this.startTime,
      conditions: [
        this.condition('PodReadyToStartContainers', this.volumesReady),
        this.condition('Initialized', this.initialized, 'ContainersNotInitialized'),
        this.condition('Ready', allReady, 'ContainersNotReady'),
        this.condition('ContainersReady', allReady, 'ContainersNotReady'),
        this.condition('PodScheduled', true),
      ],
      containerStatuses: containers,
    };
    if (this.pod.spec.initContainers?.length) {
      status.initContainerStatuses = this.containerStatuses(this.pod.spec.initContainers, this.init);
    }
    return status;
  }

  /** Writes the status; coalesces bursts so one write is in flight per pod. */
  async syncStatus(): Promise<void> {
    if (this.gone) return;
    if (this.syncing) {
      this.syncAgain = true;
      return;
    }
    this.syncing = true;
    try {
      do {
        this.syncAgain = false;
        try {
          await this.ctx.client.mergePatch(`/api/v1/namespaces/${this.namespace}/pods/${this.name}/status`, {
            status: this.buildStatus(),
          });
        } catch (err) {
          if (err instanceof KubeError && err.status === 404) {
            this.gone = true;
            return;
          }
          // transient API errors: the next change or the periodic resync retries
        }
      } while (this.syncAgain && !this.gone);
    } finally {
      this.syncing = false;
    }
  }
}

function stripTag(image: string): string {
  const at = image.indexOf('@');
  if (at >= 0) return image.slice(0, at);
  const slash = image.lastIndexOf('/');
  const colon = image.lastIndexOf(':');
  return colon > slash ? image.slice(0, colon) : image;
}
