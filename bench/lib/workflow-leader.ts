// The workflow scenario's agentflow leader runs in a process of its own (as
// the operator does), so its RSS and CPU are its own, not mixed with the
// bench driver's and BullMQ's. This is the driver's handle on it: it starts
// bench/lib/workflow-leader-process.ts and sends it JSON-line commands on
// stdin; the answers come back as JSON lines on stdout.
import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { OPERATOR_NODE_OPTIONS } from '../../src/lib/operator-node-options.ts';
import type { WorkflowTimes } from './agentflow-workflow.ts';
import type { ProfileSummary } from './cpu-profile.ts';
import type { Role } from './proc.ts';

export interface LeaderConfig {
  processes: number;
  capacity: number;
  maxForEachItems: number;
}

type Json = Record<string, unknown>;

export type LeaderCommand =
  | { id: number; type: 'gc' }
  | { id: number; type: 'counters' }
  | { id: number; type: 'api' }
  | { id: number; type: 'run'; name: string; tasks: number; timeoutMs: number; profile: boolean }
  | { id: number; type: 'stop' };

export interface RunAnswer {
  times: WorkflowTimes;
  /** heapUsed of the leader when the run began and its peak, sampled every 50 ms in the leader (MiB). */
  heapUsedBeforeMiB: number;
  heapUsedPeakMiB: number;
  workflow: Json;
  audit: Json;
  profile?: ProfileSummary & { inclusiveMsByArea: Record<string, number> };
}

export type LeaderAnswer =
  | { type: 'ready'; label: string; roles: Role[] }
  | { type: 'answer'; id: number; value: unknown }
  | { type: 'error'; id: number; message: string };

export class LeaderProcess {
  readonly pid: number;
  label = '';
  private rolesReported: Role[] = [];
  private readonly proc: ChildProcess;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private nextId = 1;
  private readonly exited: Promise<void>;

  private constructor(cfg: LeaderConfig) {
    // --expose-gc: each run starts from a collected heap.
    // The operator's NODE_OPTIONS as the chart sets them; BENCH_LEADER_NODE_OPTIONS replaces them (A/B runs).
    const flags = (process.env.BENCH_LEADER_NODE_OPTIONS ?? OPERATOR_NODE_OPTIONS).split(' ').filter(Boolean);
    this.proc = spawn(
      process.execPath,
      ['--expose-gc', ...flags, 'bench/lib/workflow-leader-process.ts', JSON.stringify(cfg)],
      {
        stdio: ['pipe', 'pipe', 'inherit'],
      },
    );
    if (this.proc.pid === undefined) throw new Error('could not start the workflow leader process');
    this.pid = this.proc.pid;
    this.exited = new Promise((resolve) => this.proc.once('exit', () => resolve()));
    void this.exited.then(() => {
      for (const p of this.pending.values()) p.reject(new Error('the workflow leader process exited'));
      this.pending.clear();
    });
  }

  static async start(cfg: LeaderConfig): Promise<LeaderProcess> {
    const l = new LeaderProcess(cfg);
    await new Promise<void>((resolve, reject) => {
      void l.exited.then(() => reject(new Error('the workflow leader process exited before it was ready')));
      createInterface({ input: l.proc.stdout as NodeJS.ReadableStream }).on('line', (line) => {
        const m = JSON.parse(line) as LeaderAnswer;
        if (m.type === 'ready') {
          l.label = m.label;
          l.rolesReported = m.roles;
          resolve();
          return;
        }
        const p = l.pending.get(m.id);
        l.pending.delete(m.id);
        if (m.type === 'answer') p?.resolve(m.value);
        else p?.reject(new Error(m.message));
      });
    });
    return l;
  }

  private ask<T>(
    cmd: LeaderCommand extends infer C ? (C extends LeaderCommand ? Omit<C, 'id'> : never) : never,
  ): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.proc.stdin?.write(`${JSON.stringify({ ...cmd, id })}\n`);
    });
  }

  /** The leader itself, then the agent processes and etcd it started. */
  roles(): Role[] {
    return this.rolesReported;
  }

  gc(): Promise<void> {
    return this.ask({ type: 'gc' });
  }

  storeCounters(): Promise<Record<string, number>> {
    return this.ask({ type: 'counters' });
  }

  apiTotals(): Promise<Json> {
    return this.ask({ type: 'api' });
  }

  run(name: string, tasks: number, timeoutMs: number, profile = false): Promise<RunAnswer> {
    return this.ask({ type: 'run', name, tasks, timeoutMs, profile });
  }

  async stop(): Promise<void> {
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 20_000);
    await this.ask({ type: 'stop' }).catch(() => undefined);
    await this.exited;
    clearTimeout(timer);
  }
}
