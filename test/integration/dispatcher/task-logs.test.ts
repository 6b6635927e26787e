import { type ChildProcess, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Dispatcher, type TaskEvent } from '../../../src/dispatcher/index.ts';
import type { StateStore } from '../../../src/state/index.ts';
import { testCluster } from '../../cluster/testing.ts';
import { testStore } from '../state/helpers.ts';
import { type SecureDispatcherSetup, secureDispatcher } from './secure.ts';

// The agentflow-agent command, as a pod runs it, against a real dispatcher
// (TLS, TokenReview on the real kube-apiserver, etcd): what it logs is what
// `kubectl logs` shows, and every line about a task names it.

const MAIN = resolve(import.meta.dirname, '../../../src/agent/main.ts');
const HANDLERS = resolve(import.meta.dirname, '../../fixtures/agent/log-handlers.mjs');
const cluster = testCluster();
let sec: SecureDispatcherSetup;
let store: StateStore;
let dispatcher: Dispatcher;
let child: ChildProcess | undefined;
const events: TaskEvent[] = [];
/** The agent's log lines (JSON, on stderr as the default logger writes them). */
const lines: Record<string, unknown>[] = [];

beforeAll(async () => {
  sec = await secureDispatcher(cluster, 'tasklogs');
  await sec.pool('pool');
  const token = await sec.serviceAccount('agents', { connect: ['pool'] });
  store = testStore(`/test-task-logs-${Date.now()}`);
  dispatcher = new Dispatcher({
    store,
    address: '127.0.0.1:0',
    orphanTimeoutMs: 60_000,
    auth: sec.auth,
    credentials: sec.credentials,
    agentLeaseTtlSeconds: 2,
  });
  dispatcher.on('task', (e) => events.push(e));
  await dispatcher.start();
  const config = join(sec.dir, 'agent.json');
  writeFileSync(
    config,
    JSON.stringify({
      handlers: {
        render: { kind: 'exec', command: ['sh', '-c', 'echo "loading the template" >&2; echo \'{"pages":2}\''] },
      },
    }),
  );
  child = spawn(process.execPath, [MAIN, '--config', config, '--handlers', HANDLERS], {
    env: {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      AGENTFLOW_DISPATCHER: `127.0.0.1:${dispatcher.port}`,
      AGENTFLOW_TOKEN_FILE: token,
      AGENTFLOW_DISPATCHER_CA_FILE: sec.caFile,
      AGENTFLOW_NAMESPACE: sec.namespace,
      AGENTFLOW_POOL: 'pool',
      AGENTFLOW_AGENT_ID: 'logs1',
      AGENTFLOW_CAPACITY: '2',
      AGENTFLOW_LOG_FORMAT: 'json',
    },
    stdio: ['ignore', 'inherit', 'pipe'],
  });
  createInterface({ input: child.stderr as NodeJS.ReadableStream }).on('line', (l) => {
    try {
      lines.push(JSON.parse(l) as Record<string, unknown>);
    } catch {
      lines.push({ msg: l }); // not ours (a crash trace): kept so a failure shows it
    }
  });
  await until('the agent to register', () => dispatcher.agents().length === 1);
}, 60_000);

afterAll(async () => {
  child?.kill('SIGKILL');
  await dispatcher?.stop(500);
  store?.close();
  sec?.close();
  await cluster.close();
});

async function until(what: string, cond: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (child && child.exitCode !== null) throw new Error(`the agent exited; its log: ${JSON.stringify(lines)}`);
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; agent log: ${JSON.stringify(lines)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const committed = (task: string) => events.some((e) => e.type === 'committed' && e.ref.task === task);

/** Runs one task and returns the agent's log lines that name it. */
async function run(task: string, handler: string): Promise<Record<string, unknown>[]> {
  dispatcher.submit({ ref: { namespace: sec.namespace, workflow: 'wf', task }, pool: 'pool', handler, input: {} });
  const end = (l: Record<string, unknown>) => l.task === task && String(l.msg).startsWith('Attempt ') && 'outcome' in l;
  await until(`the end line of ${task}`, () => lines.some(end));
  return lines.filter((l) => l.task === task);
}

describe('agent logs against a real dispatcher', () => {
  it("logs a task's start and end with its ids, and its console and ctx.log output", async () => {
    const mine = await run('hello', 'chatty');
    const identity = { workflow: 'wf', namespace: sec.namespace, taskId: 'wf/hello', attempt: 1, handler: 'chatty' };
    expect(mine.map((l) => l.msg)).toEqual(['Attempt started', 'chatty begins', 'chatty fetched', 'Attempt succeeded']);
    for (const l of mine) expect(l).toMatchObject({ ...identity, agentId: 'agents.logs1' });
    expect(mine[1]).toMatchObject({ stream: 'console', level: 'info' });
    expect(mine[2]).toMatchObject({ bytes: 3 });
    expect(mine[3]).toMatchObject({ outcome: 'succeeded', durationMs: expect.any(Number) });
  });

  it("keeps an exec command's stderr after it succeeds", async () => {
    const mine = await run('report', 'render');
    expect(mine.map((l) => l.msg)).toEqual(['Attempt started', 'loading the template', 'Attempt succeeded']);
    expect(mine[1]).toMatchObject({ stream: 'stderr', taskId: 'wf/report', handler: 'render' });
    await until('the commit', () => committed('report'));
  });

  it('logs a failure with its code and whether it is retried', async () => {
    const mine = await run('broken', 'fails');
    expect(mine.at(-1)).toMatchObject({
      level: 'warn',
      outcome: 'failed',
      retryable: true,
      code: 'HANDLER_ERROR',
      error: 'the upstream said no',
      taskId: 'wf/broken',
    });
  });
});
