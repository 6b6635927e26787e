import { type ChildProcess, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  LOG_CHUNK_BYTES,
  LOG_CUT_MARKER,
  STREAM_MAX_CHUNK_CHARS,
  STREAM_MAX_CHUNKS_PER_MESSAGE,
  STREAM_RING_BYTES,
} from '../../../src/api/data-api.ts';
import { Dispatcher, type TaskEvent } from '../../../src/dispatcher/index.ts';
import { PROTOCOL_VERSION } from '../../../src/lib/wire-batch.ts';
import type { StateStore } from '../../../src/state/index.ts';
import { followLog, readLog } from '../../../src/state/task-logs.ts';
import { testCluster } from '../../cluster/testing.ts';
import { testStore } from '../state/helpers.ts';
import { RawAgent } from './raw-agent.ts';
import { type SecureDispatcherSetup, secureDispatcher } from './secure.ts';

// Streamed output (ctx.stream, protocol 4) end to end: the agentflow-agent command as a pod runs
// it, a real dispatcher (TLS, TokenReview on the real kube-apiserver), etcd, and a follower reading
// the stream ring as the data API does. Chunks arrive in order, while the handler runs, about
// 100 ms after it streamed them; the ring keeps its bound; a hostile agent's chunks are bounded.

const MAIN = resolve(import.meta.dirname, '../../../src/agent/main.ts');
const HANDLERS = resolve(import.meta.dirname, '../../fixtures/agent/stream-handlers.mjs');
const cluster = testCluster();
let sec: SecureDispatcherSetup;
let store: StateStore;
let dispatcher: Dispatcher;
let token = '';
let child: ChildProcess | undefined;
const raws: RawAgent[] = [];
const events: TaskEvent[] = [];
/** The agent's stderr (its JSON log), shown when something fails. */
const agentLog: string[] = [];

beforeAll(async () => {
  sec = await secureDispatcher(cluster, 'stream');
  await sec.pool('pool');
  await sec.pool('pool-raw', { capacity: 4 });
  token = await sec.serviceAccount('agents', { connect: ['pool', 'pool-raw'] });
  store = testStore(`/test-stream-${Date.now()}`);
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
  writeFileSync(config, JSON.stringify({ handlers: {} }));
  child = spawn(process.execPath, [MAIN, '--config', config, '--handlers', HANDLERS], {
    env: {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      AGENTFLOW_DISPATCHER: `127.0.0.1:${dispatcher.port}`,
      AGENTFLOW_TOKEN_FILE: token,
      AGENTFLOW_DISPATCHER_CA_FILE: sec.caFile,
      AGENTFLOW_NAMESPACE: sec.namespace,
      AGENTFLOW_POOL: 'pool',
      AGENTFLOW_AGENT_ID: 'streamer1',
      AGENTFLOW_CAPACITY: '4',
      AGENTFLOW_LOG_FORMAT: 'json',
    },
    stdio: ['ignore', 'inherit', 'pipe'],
  });
  createInterface({ input: child.stderr as NodeJS.ReadableStream }).on('line', (l) => agentLog.push(l));
  await until('the agent to register', () => dispatcher.agents().length === 1);
}, 60_000);

afterAll(async () => {
  child?.kill('SIGKILL');
  for (const a of raws) a.close();
  await dispatcher?.stop(500);
  store?.close();
  sec?.close();
  await cluster.close();
});

async function until(what: string, cond: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (child && child.exitCode !== null) throw new Error(`the agent exited; its log: ${agentLog.join('\n')}`);
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; agent log: ${agentLog.join('\n')}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const ref = (task: string, attempt = 1) => ({ namespace: sec.namespace, workflow: 'wf', task, attempt });
const committed = (task: string) =>
  events.find((e): e is Extract<TaskEvent, { type: 'committed' }> => e.type === 'committed' && e.ref.task === task);

function submit(task: string, handler: string, input: unknown): void {
  dispatcher.submit({ ref: ref(task), pool: 'pool', handler, input });
}

/** Follows a task's stream from before it starts to its end mark; `onText` gets each piece as it lands. */
async function follow(task: string, onText: (text: string) => void): Promise<() => Promise<void>> {
  const start = await readLog(store, ref(task), 'stream');
  const abort = new AbortController();
  const timeout = setTimeout(() => abort.abort(), 30_000);
  const done = followLog(store, ref(task), start, onText, new Promise(() => undefined), abort.signal, 'stream');
  return async () => {
    await done;
    clearTimeout(timeout);
    expect(abort.signal.aborted, 'the follower ends at the end mark, not at its timeout').toBe(false);
  };
}

const quantile = (sorted: number[], q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];

describe('streamed output against a real dispatcher', () => {
  it('reaches a follower in order, while the handler runs, about 100 ms after each chunk was streamed', async () => {
    let text = '';
    const lags: number[] = [];
    let firstAt: number | undefined;
    let committedBeforeFirst = false;
    const ended = await follow('live', (t) => {
      const at = Date.now();
      if (firstAt === undefined) {
        firstAt = at;
        committedBeforeFirst = committed('live') !== undefined;
      }
      text += t;
      for (const m of t.matchAll(/<\d+@(\d+)>/g)) lags.push(at - Number(m[1]));
    });
    submit('live', 'tokens', { n: 50, gapMs: 20 });
    await ended();
    await until('the result', () => committed('live') !== undefined);
    expect([...text.matchAll(/<(\d+)@/g)].map((m) => Number(m[1]))).toEqual(Array.from({ length: 50 }, (_, i) => i));
    expect(text).toMatch(/^(<\d+@\d+>)+$/); // exactly as streamed: nothing added between pieces
    expect(committedBeforeFirst, 'the first chunk arrives while the handler still runs').toBe(false);
    const sorted = [...lags].sort((a, b) => a - b);
    const p50 = quantile(sorted, 0.5) as number;
    const p90 = quantile(sorted, 0.9) as number;
    const max = sorted.at(-1) as number;
    console.log(`stream lag over ${lags.length} chunks 20 ms apart: p50 ${p50} ms, p90 ${p90} ms, max ${max} ms`);
    expect(lags).toHaveLength(50);
    // Agent batching (STREAM_SHIP_MS 50) + storage (STREAM_FLUSH_MS 50) + etcd and its watch: about 100 ms
    // at worst; the log lines' 250 ms flush would put the median past 150.
    expect(p50).toBeLessThan(150);
    expect(max).toBeLessThan(400);
    // The final output is still the handler's return value, and the stream is all there once it is over.
    expect(committed('live')?.result.output).toEqual({ streamed: 50 });
    expect(await readLog(store, ref('live'), 'stream')).toMatchObject({ text, ended: true, dropped: false });
    // ...and none of it is in the attempt's log lines.
    expect((await readLog(store, ref('live'))).text).not.toContain('<0@');
  });

  it('keeps text exactly as streamed (no newline added, multi-byte characters whole)', async () => {
    const words = ['Hé', 'llo, ', 'wörld ', '🙂', '\n', 'next line', ' 日本語', ''];
    const ended = await follow('words', () => undefined);
    submit('words', 'words', { words });
    await ended();
    await until('the result', () => committed('words') !== undefined);
    expect(committed('words')?.result.output).toBe('the final answer');
    expect((await readLog(store, ref('words'), 'stream')).text).toBe(words.join(''));
  });

  it('refuses what is not a string and a chunk over 64 KiB, naming stream: chunk', async () => {
    submit('refused', 'refused', {});
    await until('the result', () => committed('refused') !== undefined);
    expect(committed('refused')?.result.output).toEqual([
      'TypeError: stream: chunk must be a string, got 42',
      expect.stringMatching(/^RangeError: stream: chunk is 81920 bytes \(UTF-8\); the limit is 65536$/),
    ]);
  });

  it('keeps the last STREAM_RING_BYTES of a long stream: the oldest dropped and said so, the newest kept', async () => {
    const bytes = 60 * 1024;
    const chunks = Math.ceil((STREAM_RING_BYTES * 1.5) / bytes); // half as much again as the ring keeps
    submit('flood', 'flood', { chunks, bytes });
    await until('the result', () => committed('flood') !== undefined, 30_000);
    const s = await readLog(store, ref('flood'), 'stream');
    expect(s).toMatchObject({ dropped: true, ended: true });
    const size = Buffer.byteLength(s.text);
    expect(size).toBeLessThanOrEqual(STREAM_RING_BYTES);
    expect(size).toBeGreaterThan(STREAM_RING_BYTES - 2 * LOG_CHUNK_BYTES);
    const heads = [...s.text.matchAll(/#(\d{4}):/g)].map((m) => Number(m[1]));
    expect(heads.at(-1)).toBe(chunks - 1);
    expect(heads[0]).toBeGreaterThan(0);
    // In order, none missing between the first kept and the last.
    expect(heads).toEqual(heads.map((_, i) => (heads[0] as number) + i));
    expect(s.text.endsWith('x'.repeat(100))).toBe(true);
  });
});

describe('streamed output from a hostile agent', () => {
  it('bounds a TaskLog’s chunks (count and size) and drops chunks for work the agent does not hold', async () => {
    const a = new RawAgent(dispatcher.port, { caFile: sec.caFile, tokenFile: token });
    raws.push(a);
    a.send({
      register: {
        namespace: sec.namespace,
        pool: 'pool-raw',
        agentId: 'raw1',
        pod: 'pod-raw1',
        handlers: ['work'],
        capacity: 2,
        leaseId: '',
        inFlight: [],
        runtimeVersion: 'test',
        protocol: PROTOCOL_VERSION,
      },
    });
    expect((await a.next('registered')).protocol).toBeGreaterThanOrEqual(4);
    dispatcher.submit({ ref: ref('raw'), pool: 'pool-raw', handler: 'work', input: {} });
    const assign = await a.next('assign');
    const at = { taskId: assign.taskId, attempt: assign.attempt, token: assign.token };
    const now = Date.now();
    // One enormous chunk, then more chunks than one message may carry.
    a.send({
      log: { ...at, lines: [], end: false, chunks: [{ timeMs: now, text: 'y'.repeat(STREAM_MAX_CHUNK_CHARS * 3) }] },
    });
    const many = Array.from({ length: STREAM_MAX_CHUNKS_PER_MESSAGE + 300 }, (_, i) => ({
      timeMs: now,
      text: `[${i}]`,
    }));
    a.send({ log: { ...at, lines: [], end: false, chunks: many } });
    // Chunks for a task it holds no claim on, and for a stale attempt: dropped, no error, nothing kept.
    const stray = [{ timeMs: now, text: 'stray' }];
    a.send({ log: { taskId: 'wf/not-mine', attempt: 1, token: 1, lines: [], end: true, chunks: stray } });
    a.send({ log: { ...at, attempt: 7, lines: [], end: true, chunks: stray } });
    a.send({ log: { ...at, lines: [], end: true, chunks: [{ timeMs: now, text: '<last>' }] } });
    a.send({ result: { ...at, outputJson: '{}' } });
    expect(await a.next('ack')).toMatchObject({ taskId: assign.taskId, status: 'COMMITTED' });
    const s = await readLog(store, { ...ref('raw'), attempt: assign.attempt }, 'stream');
    expect(s.ended).toBe(true);
    const huge = `${'y'.repeat(STREAM_MAX_CHUNK_CHARS)}${LOG_CUT_MARKER}`;
    const kept = many
      .slice(0, STREAM_MAX_CHUNKS_PER_MESSAGE)
      .map((c) => c.text)
      .join('');
    expect(s.text).toBe(`${huge}${kept}<last>`);
    expect((await readLog(store, ref('not-mine'), 'stream')).text).toBe('');
    expect((await readLog(store, { ...ref('raw'), attempt: 7 }, 'stream')).text).toBe('');
    // The attempt's log lines are untouched by all of it.
    expect((await readLog(store, { ...ref('raw'), attempt: assign.attempt })).text).toBe('');
    expect(a.count('error')).toBe(0);
  });
});
