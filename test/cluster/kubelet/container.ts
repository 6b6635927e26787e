import { type ChildProcess, spawn } from 'node:child_process';
import { createWriteStream, mkdirSync } from 'node:fs';
import { constants } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { enterMountNamespace } from './mount-namespace.ts';
import { runProbe } from './probe.ts';
import type { Container, ContainerState, ContainerStatus, Probe } from './types.ts';

export interface ContainerRunnerOptions {
  container: Container;
  argv: string[];
  env: NodeJS.ProcessEnv;
  cwd: string;
  logDir: string;
  podIP: string;
  /** Pod restart policy, or 'Never' for init containers that must not loop. */
  restartPolicy: 'Always' | 'OnFailure' | 'Never';
  backoffBaseMs: number;
  backoffMaxMs: number;
  terminationGraceMs: number;
  onChange: () => void;
  onEvent: (type: 'Normal' | 'Warning', reason: string, message: string) => void;
  /**
   * For a container with volume mounts, called at every start: the argv that
   * runs `argv` in a mount namespace of its own, changing to `cwd` there (which
   * need not exist on the host). It reports a failure before the exec on fd 3.
   * Throws when the mounts cannot be set up.
   */
  mountNamespace?: (argv: string[], cwd: string, run: number) => string[];
}

const now = () => new Date().toISOString();

/**
 * One container: a local process started from the container's command (or the
 * image's mapped entry point), restarted according to the restart policy with
 * exponential back-off (CrashLoopBackOff), probed for readiness and liveness.
 */
export class ContainerRunner {
  restartCount = 0;
  state: ContainerState = { waiting: { reason: 'ContainerCreating' } };
  lastState: ContainerState = {};
  ready = false;
  started = false;
  private proc: ChildProcess | undefined;
  private stopping = false;
  private backoffTimer: NodeJS.Timeout | undefined;
  private probeTimers: NodeJS.Timeout[] = [];
  private exitWaiters: (() => void)[] = [];
  private consecutiveCrashes = 0;
  private runId = 0;
  private readonly done: Promise<ContainerState['terminated']>;
  private resolveDone!: (t: ContainerState['terminated']) => void;

  private readonly o: ContainerRunnerOptions;

  constructor(o: ContainerRunnerOptions) {
    this.o = o;
    mkdirSync(o.logDir, { recursive: true });
    this.done = new Promise((r) => {
      this.resolveDone = r;
    });
  }

  get name(): string {
    return this.o.container.name;
  }

  get pid(): number | undefined {
    return this.proc?.exitCode === null ? this.proc.pid : undefined;
  }

  /** Resolves with the final termination (no further restart will happen). */
  finished(): Promise<ContainerState['terminated']> {
    return this.done;
  }

  get isTerminal(): boolean {
    return this.state.terminated !== undefined && this.backoffTimer === undefined;
  }

  start(): void {
    if (this.stopping) return;
    const id = ++this.runId;
    const logFile = join(this.o.logDir, `${this.restartCount}.log`);
    const log = createWriteStream(logFile, { flags: 'a' });
    const startedAt = now();
    const wrap = this.o.mountNamespace;
    let argv = this.o.argv;
    if (wrap) {
      try {
        argv = wrap(this.o.argv, this.o.cwd, id);
      } catch (err) {
        log.end();
        this.exited(
          { exitCode: 128, reason: 'StartError', message: (err as Error).message, startedAt, finishedAt: now() },
          startedAt,
        );
        return;
      }
    }
    const [cmd, ...args] = argv;
    const child = spawn(cmd as string, args, {
      // The wrapper changes directory inside the namespace, where the working directory may only exist there.
      cwd: wrap ? this.o.logDir : this.o.cwd,
      env: this.o.env,
      stdio: wrap ? ['ignore', 'pipe', 'pipe', 'pipe'] : ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    this.proc = child;
    child.stdout?.pipe(log);
    child.stderr?.pipe(log);
    let spawnError: Error | undefined;
    let startFailure = '';
    const running = () => {
      if (this.runId !== id || this.proc !== child) return;
      this.state = { running: { startedAt } };
      this.started = true;
      this.o.onEvent('Normal', 'Started', `Started container ${this.name}`);
      this.startProbes(id);
      this.o.onChange();
    };
    child.on('error', (err) => {
      spawnError = err;
    });
    const status = child.stdio[3] as Readable | null | undefined;
    if (status) {
      // The wrapper closes fd 3 right before it execs the command: EOF with no
      // message means the command itself now runs.
      status.setEncoding('utf8');
      status.on('data', (d: string) => {
        startFailure += d;
      });
      status.on('end', () => {
        if (!startFailure) running();
      });
    } else child.on('spawn', running);
    child.on('close', (code, signal) => {
      let terminated: NonNullable<ContainerState['terminated']>;
      if (spawnError || startFailure) {
        terminated = {
          exitCode: 128,
          reason: 'StartError',
          message: spawnError
            ? `failed to start ${JSON.stringify(cmd)}: ${spawnError.message}`
            : startFailure.trim().split('\n').join('; '),
          startedAt,
          finishedAt: now(),
        };
      } else {
        const signo = signal ? (constants.signals[signal] ?? 9) : undefined;
        const exitCode = code ?? 128 + (signo ?? 9);
        terminated = {
          exitCode,
          reason: exitCode === 0 ? 'Completed' : 'Error',
          startedAt,
          finishedAt: now(),
          ...(signo !== undefined ? { signal: signo } : {}),
        };
      }
      this.proc = undefined;
      this.exited(terminated, startedAt);
    });
  }

  /** A run ended (or never got going): restart per policy with back-off, or finish. */
  private exited(terminated: NonNullable<ContainerState['terminated']>, startedAt: string): void {
    this.stopProbes();
    this.ready = false;
    const ranMs = Date.now() - Date.parse(startedAt);
    this.consecutiveCrashes = ranMs > 60_000 ? 0 : this.consecutiveCrashes + 1;
    for (const w of this.exitWaiters.splice(0)) w();
    const restart =
      !this.stopping &&
      (this.o.restartPolicy === 'Always' || (this.o.restartPolicy === 'OnFailure' && terminated.exitCode !== 0));
    if (restart) {
      const delay = Math.min(this.o.backoffBaseMs * 2 ** (this.consecutiveCrashes - 1), this.o.backoffMaxMs);
      this.lastState = { terminated };
      this.state = {
        waiting: {
          reason: 'CrashLoopBackOff',
          message: `back-off ${Math.round(delay / 1000)}s restarting failed container=${this.name}`,
        },
      };
      this.o.onEvent('Warning', 'BackOff', `Back-off restarting failed container ${this.name}`);
      this.backoffTimer = setTimeout(() => {
        this.backoffTimer = undefined;
        if (this.stopping) {
          this.state = { terminated };
          this.resolveDone(terminated);
          this.o.onChange();
          return;
        }
        this.restartCount++;
        this.start();
      }, delay);
    } else {
      this.state = { terminated };
      this.resolveDone(terminated);
    }
    this.o.onChange();
  }

  /** Fails the container before it ever runs (bad config, unknown image). */
  failToStart(reason: string, message: string): void {
    this.state = { waiting: { reason, message } };
    this.o.onChange();
  }

  /** Marks a container that never ran as finished (pod deleted while waiting). */
  abandon(): void {
    if (this.proc || this.state.terminated) return;
    const terminated = { exitCode: 0, reason: 'ContainerStatusUnknown', finishedAt: now() };
    this.state = { terminated };
    this.resolveDone(terminated);
  }

  /** Graceful stop: SIGTERM, SIGKILL after the grace period; no restart. */
  async terminate(graceMs = this.o.terminationGraceMs): Promise<void> {
    this.stopping = true;
    this.stopProbes();
    if (this.backoffTimer) {
      clearTimeout(this.backoffTimer);
      this.backoffTimer = undefined;
      const t = this.lastState.terminated ?? { exitCode: 0, reason: 'Completed' };
      this.state = { terminated: t };
      this.resolveDone(t);
    }
    const child = this.proc;
    if (!child?.pid) {
      this.abandon();
      return;
    }
    const exited = new Promise<void>((r) => this.exitWaiters.push(r));
    this.o.onEvent('Normal', 'Killing', `Stopping container ${this.name}`);
    signalGroup(child.pid, 'SIGTERM');
    const timer = setTimeout(() => signalGroup(child.pid as number, 'SIGKILL'), graceMs);
    await exited;
    clearTimeout(timer);
  }

  /** Sends a signal to the container's process group (tests: kill -9 an agent). */
  kill(signal: NodeJS.Signals): boolean {
    if (!this.proc?.pid) return false;
    signalGroup(this.proc.pid, signal);
    return true;
  }

  status(): ContainerStatus {
    const c = this.o.container;
    return {
      name: c.name,
      image: c.image ?? '',
      imageID: c.image ? `process-kubelet://${c.image}` : '',
      ...(this.started ? { containerID: `process://${this.o.logDir}/${this.runId}` } : {}),
      ready: this.ready,
      started: this.state.running !== undefined,
      restartCount: this.restartCount,
      state: this.state,
      lastState: this.lastState,
    };
  }

  private startProbes(id: number): void {
    const c = this.o.container;
    if (!c.readinessProbe) this.ready = true;
    else
      this.loopProbe(
        id,
        c.readinessProbe,
        (ok) => {
          if (this.ready !== ok) {
            this.ready = ok;
            this.o.onChange();
          }
        },
        'Readiness',
      );
    if (c.livenessProbe) {
      this.loopProbe(
        id,
        c.livenessProbe,
        (ok) => {
          if (!ok && !this.stopping && this.proc?.pid) {
            this.o.onEvent('Normal', 'Killing', `Container ${this.name} failed liveness probe, will be restarted`);
            const pid = this.proc.pid;
            signalGroup(pid, 'SIGTERM');
            setTimeout(() => signalGroup(pid, 'SIGKILL'), this.o.terminationGraceMs).unref();
          }
        },
        'Liveness',
      );
    }
  }

  private loopProbe(id: number, probe: Probe, apply: (ok: boolean) => void, kind: string): void {
    const period = (probe.periodSeconds ?? 10) * 1000;
    const successThreshold = probe.successThreshold ?? 1;
    const failureThreshold = probe.failureThreshold ?? 3;
    let successes = 0;
    let failures = 0;
    const tick = async () => {
      if (this.runId !== id || this.stopping) return;
      // An exec probe runs where the container's files are: in its mount namespace.
      const pid = this.proc?.pid;
      const enter = this.o.mountNamespace && pid ? enterMountNamespace(pid) : undefined;
      const r = await runProbe(probe, this.o.container, this.o.podIP, this.o.env, enter);
      if (this.runId !== id || this.stopping) return;
      if (r.ok) {
        failures = 0;
        successes++;
        if (successes >= successThreshold) apply(true);
      } else {
        successes = 0;
        failures++;
        this.o.onEvent('Warning', 'Unhealthy', `${kind} probe failed: ${r.message}`);
        if (failures >= failureThreshold) apply(false);
      }
      this.probeTimers.push(setTimeout(tick, period));
    };
    this.probeTimers.push(setTimeout(tick, (probe.initialDelaySeconds ?? 0) * 1000));
  }

  private stopProbes(): void {
    for (const t of this.probeTimers.splice(0)) clearTimeout(t);
  }
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // gone
    }
  }
}
