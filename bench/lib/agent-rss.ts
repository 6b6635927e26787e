// Memory of one agent process, as an agent pod runs it: `agentflow agent`, a real process connected over TLS
// with a bearer token to a real Dispatcher (etcd with fsync, as in the rest of the bench). Its VmRSS
// (/proc/<pid>/status) is sampled registered and idle, after a quiet spell (src/lib/idle-memory.ts); at its
// largest while a burst of no-op tasks runs (the agent's CPU per task over it shows whether a flag trades
// speed for memory); with 16 sleeping tasks in flight right after the burst; and idle again after a quiet spell.
//
//   bash scripts/run.sh node bench/lib/agent-rss.ts [--entry source,image] [--burst 20000] [--settle-seconds 23]
//       [--node-options="..."]   NODE_OPTIONS of the agent (default AGENT_NODE_OPTIONS, what agent pods get; "" for none)
//       [--node-args="..."]      node flags on its command line (for V8 flags NODE_OPTIONS refuses)
//   bash scripts/run.sh node bench/lib/agent-rss.ts --imports     what each dependency costs on import
//
// Entries: `image` is the container image's ENTRYPOINT, dist/cli/main.js compiled by tsc -p tsconfig.build.json
// (built here into a temporary directory, as the Dockerfile does); `source` is bin/agentflow.mjs from the
// checkout, whose TypeScript Node strips, measured with a warm compile cache (bin/from-source.mjs).
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Dispatcher, type TaskEvent } from '../../src/dispatcher/index.ts';
import { AGENT_NODE_OPTIONS } from '../../src/lib/agent-node-options.ts';
import { IDLE_RELEASE_AFTER_MS } from '../../src/lib/idle-memory.ts';
import { silentLogger } from '../../src/lib/log.ts';
import { StateStore } from '../../src/state/index.ts';
import { repoRoot } from '../../test/cluster/binaries.ts';
import { EtcdServer } from '../../test/cluster/etcd.ts';
import { sleep } from './clock.ts';
import { cpuSeconds } from './proc.ts';
import { printTable } from './report.ts';
import { benchSecurity } from './security.ts';
import { round } from './stats.ts';

export type AgentEntry = 'source' | 'image';

/** The issue 16 goals this measures, MiB of VmRSS. */
export const IDLE_RSS_GOAL_MIB = 64;
export const IN_FLIGHT_RSS_GOAL_MIB = 96;

const NAMESPACE = 'bench';
const POOL = 'bench';
const HANDLER = 'sleep';
/** The goal's "with 16 tasks in flight": also the agent's capacity. */
export const IN_FLIGHT = 16;
/** Long enough for the agent's IdleMemoryRelease (at most twice IDLE_RELEASE_AFTER_MS after the last task). */
export const DEFAULT_SETTLE_MS = 2 * IDLE_RELEASE_AFTER_MS + 3_000;

export interface AgentRssOptions {
  entries: AgentEntry[];
  /** NODE_OPTIONS for the agent process ('' : none). */
  nodeOptions: string;
  /** Node flags on the agent's command line (some, e.g. --single-threaded-gc, are refused in NODE_OPTIONS). */
  nodeArgs: string[];
  /** No-op tasks run after the idle sample, as fast as the agent takes them (0: skip). */
  burstTasks: number;
  /** How long the agent is left alone, after the in-flight tasks, before the settled sample. */
  settleMs: number;
}

/** VmRSS samples over a few seconds, MiB. */
export interface RssSample {
  median: number;
  max: number;
  /**
   * Of the last sample: anonymous memory (V8 heaps, malloc, stacks), what each agent pays alone; the rest is
   * file-backed and clean (the node binary's code as it is touched), shared with every process mapping it.
   */
  anonymous: number;
}

export interface AgentRssRun {
  entry: AgentEntry;
  nodeOptions: string;
  nodeArgs: string[];
  /** Registered, before any task, settleMs after connecting. */
  idle: RssSample;
  /** The largest VmRSS seen while the burst ran. */
  busyMiB?: number;
  /** IN_FLIGHT tasks asleep in their handlers, started right after the burst. */
  inFlight: RssSample;
  /** Idle again, settleMs after the last task. */
  settled: RssSample;
  /** VmHWM: the process's peak RSS over the whole run. */
  peakMiB: number;
  /** The agent process's CPU (user + system) per no-op task over the burst. */
  agentCpuMsPerTask?: number;
  burstTasksPerSec?: number;
}

const HANDLERS_MODULE = `// The agent-rss benchmark's handler: sleeps input.ms (0: returns at once), ends early on cancel.
export function ${HANDLER}(ctx) {
  const ms = ctx.input?.ms ?? 0;
  if (ms <= 0) return { ok: true };
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => resolve({ ok: true }), ms);
    ctx.signal.addEventListener('abort', () => { clearTimeout(t); reject(ctx.signal.reason); }, { once: true });
  });
}
`;

function status(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return '';
  }
}

function statusMiB(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(status(pid));
  return m ? Number(m[1]) / 1024 : 0;
}

function anonymousMiB(pid: number): number {
  try {
    const m = /Anonymous:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0;
  }
}

async function sampleRss(pid: number, ms = 3_000, every = 200): Promise<RssSample> {
  const values: number[] = [];
  for (let t = 0; t < ms; t += every) {
    values.push(statusMiB(pid, 'VmRSS'));
    await sleep(every);
  }
  values.sort((a, b) => a - b);
  return {
    median: round(values[Math.floor(values.length / 2)] ?? 0, 1),
    max: round(values.at(-1) ?? 0, 1),
    anonymous: round(anonymousMiB(pid), 1),
  };
}

async function until(what: string, cond: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`agent-rss: timed out waiting for ${what}`);
    await sleep(20);
  }
}

/**
 * Compiles src/ as the Dockerfile does into `dir`/dist, beside links to proto/ and node_modules/ and a
 * copy of package.json ("type": "module"), the layout the image has. Returns the entry point.
 */
function buildImageLayout(dir: string): string {
  const tsc = join(repoRoot, 'node_modules', '.bin', 'tsc');
  // Other work in progress may carry type errors: tsc emits regardless, and the entry point's presence is what counts.
  spawnSync(tsc, ['-p', join(repoRoot, 'tsconfig.build.json'), '--outDir', join(dir, 'dist')], { stdio: 'ignore' });
  const entry = join(dir, 'dist', 'cli', 'main.js');
  if (!existsSync(entry)) throw new Error(`agent-rss: tsc -p tsconfig.build.json did not produce ${entry}`);
  symlinkSync(join(repoRoot, 'proto'), join(dir, 'proto'));
  symlinkSync(join(repoRoot, 'node_modules'), join(dir, 'node_modules'));
  writeFileSync(join(dir, 'package.json'), readFileSync(join(repoRoot, 'package.json')));
  return entry;
}

/** Starts etcd and a Dispatcher (TLS + token auth), runs each entry's agent process in turn, and stops them. */
export async function measureAgentRss(opts: AgentRssOptions): Promise<AgentRssRun[]> {
  const dir = mkdtempSync(join(tmpdir(), 'agentflow-agent-rss-'));
  const etcd = new EtcdServer({ dir, name: 'etcd' });
  let store: StateStore | undefined;
  let dispatcher: Dispatcher | undefined;
  try {
    const grant = { namespace: NAMESPACE, pool: POOL, maxCapacity: IN_FLIGHT, handlers: [HANDLER] };
    const sec = await benchSecurity('tls+auth', dir, grant);
    await etcd.start();
    store = new StateStore({ endpoints: [etcd.endpoint], prefix: '/bench-agent-rss' });
    dispatcher = new Dispatcher({ store, auth: sec.auth, credentials: sec.credentials, logger: silentLogger });
    await dispatcher.start();
    const handlers = join(dir, 'handlers.mjs');
    writeFileSync(handlers, HANDLERS_MODULE);
    const runs: AgentRssRun[] = [];
    for (const entry of opts.entries) {
      const script = entry === 'source' ? join(repoRoot, 'bin', 'agentflow.mjs') : buildImageLayout(join(dir, 'image'));
      const compileCache = join(dir, 'compile-cache');
      // A first start fills the compile cache (`agent --help` loads every module the agent runs); the measured one is warm.
      if (entry === 'source') {
        execFileSync(process.execPath, [script, 'agent', '--help'], {
          env: { ...process.env, NODE_COMPILE_CACHE: compileCache },
          stdio: 'ignore',
        });
      }
      const name = `agent-${entry}`;
      const creds = sec.agentCredentials(name, { podBound: true });
      runs.push(
        await measureOne(dispatcher, entry, opts, {
          script,
          handlers,
          env: {
            PATH: process.env.PATH ?? '',
            AGENTFLOW_DISPATCHER: `127.0.0.1:${dispatcher.port}`,
            AGENTFLOW_TOKEN_FILE: creds.tokenFile,
            AGENTFLOW_DISPATCHER_CA_FILE: creds.caFile ?? '',
            AGENTFLOW_DISPATCHER_SERVER_NAME: creds.serverName ?? '',
            AGENTFLOW_CAPACITY: String(IN_FLIGHT),
            AGENTFLOW_DRAIN_TIMEOUT_SECONDS: '1',
            POD_NAME: name,
            POD_NAMESPACE: NAMESPACE,
            AGENTFLOW_POOL: POOL,
            NODE_COMPILE_CACHE: compileCache,
            ...(opts.nodeOptions && { NODE_OPTIONS: opts.nodeOptions }),
            // Allocator settings, to compare (MALLOC_ARENA_MAX=2, LD_PRELOAD=libjemalloc.so.2): passed through as set here.
            ...Object.fromEntries(
              Object.entries(process.env).filter(([k]) => k.startsWith('MALLOC_') || k === 'LD_PRELOAD'),
            ),
          },
        }),
      );
    }
    return runs;
  } finally {
    await dispatcher?.stop(1_000);
    store?.close();
    await etcd.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function measureOne(
  dispatcher: Dispatcher,
  entry: AgentEntry,
  opts: AgentRssOptions,
  p: { script: string; handlers: string; env: NodeJS.ProcessEnv },
): Promise<AgentRssRun> {
  const podName = p.env.POD_NAME ?? '';
  const child = spawn(process.execPath, [...opts.nodeArgs, p.script, 'agent', `--handlers=${p.handlers}`], {
    env: p.env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const pid = child.pid;
  if (pid === undefined) throw new Error(`agent-rss: could not start ${p.script}`);
  // The agent logs two lines per attempt: keep the last few, for when it fails.
  const tail: string[] = [];
  createInterface({ input: child.stderr }).on('line', (l) => {
    tail.push(l);
    if (tail.length > 20) tail.shift();
  });
  let exited = false;
  child.once('exit', () => {
    exited = true;
  });
  const started = new Set<string>();
  const committed = new Set<string>();
  const onTask = (e: TaskEvent) => {
    if (e.ref.namespace !== NAMESPACE || !e.ref.workflow.startsWith(`${entry}-`)) return;
    if (e.type === 'started') started.add(`${e.ref.workflow}/${e.ref.task}`);
    if (e.type === 'committed') committed.add(`${e.ref.workflow}/${e.ref.task}`);
  };
  dispatcher.on('task', onTask);
  const submit = (workflow: string, n: number, ms: number) => {
    for (let i = 0; i < n; i++) {
      dispatcher.submit({
        ref: { namespace: NAMESPACE, workflow, task: `t${i}` },
        pool: POOL,
        handler: HANDLER,
        input: { ms },
      });
    }
  };
  try {
    const registered = () => dispatcher.agents().some((a) => a.pod === podName);
    await until(`${entry}: the agent to register`, () => registered() || exited, 30_000);
    if (exited) throw new Error(`agent-rss: ${entry}: the agent exited before it registered`);
    // A pod sits idle for long: sample after the quiet spell in which the agent gives back what start-up grew.
    await sleep(opts.settleMs);
    const idle = await sampleRss(pid);
    const run: AgentRssRun = {
      entry,
      nodeOptions: opts.nodeOptions,
      nodeArgs: opts.nodeArgs,
      idle,
      inFlight: idle,
      settled: idle,
      peakMiB: 0,
    };

    if (opts.burstTasks > 0) {
      const cpu0 = cpuSeconds(pid);
      const t0 = performance.now();
      submit(`${entry}-burst`, opts.burstTasks, 0);
      let busy = 0;
      await until(
        `${entry}: the burst to commit`,
        () => {
          busy = Math.max(busy, statusMiB(pid, 'VmRSS'));
          return committed.size >= opts.burstTasks;
        },
        60_000 + opts.burstTasks * 10,
      );
      const seconds = (performance.now() - t0) / 1000;
      run.busyMiB = round(busy, 1);
      run.agentCpuMsPerTask = round(((cpuSeconds(pid) - cpu0) * 1000) / opts.burstTasks, 3);
      run.burstTasksPerSec = round(opts.burstTasks / seconds, 0);
    }

    // Right after the burst, before any quiet spell: what the load left behind, plus the sleeping tasks.
    const before = committed.size;
    submit(`${entry}-inflight`, IN_FLIGHT, 5_000);
    await until(`${entry}: ${IN_FLIGHT} tasks to start`, () => started.size >= before + IN_FLIGHT, 30_000);
    await sleep(500);
    run.inFlight = await sampleRss(pid);
    await until(`${entry}: the sleeping tasks to commit`, () => committed.size >= before + IN_FLIGHT, 30_000);

    // A quiet spell long enough for the agent to give back what the work grew (IdleMemoryRelease).
    await sleep(opts.settleMs);
    run.settled = await sampleRss(pid);
    run.peakMiB = round(statusMiB(pid, 'VmHWM'), 1);
    return run;
  } catch (err) {
    process.stderr.write(`agent-rss: ${entry}: the agent's last log lines:\n${tail.join('\n')}\n`);
    throw err;
  } finally {
    dispatcher.off('task', onTask);
    child.kill('SIGKILL');
    if (!exited) await new Promise((resolve) => child.once('exit', resolve));
  }
}

/**
 * What importing one module costs: a fresh node per module, VmRSS after a memory-reducing GC (so the young
 * generation the import grew does not count).
 */
export interface ImportCost {
  module: string;
  /** What the row's cost is counted over: the row before it (a chain that adds one thing each) or bare node. */
  over: 'previous' | 'bare';
  rssMiB: number;
  /** VmRSS minus that of the row it is counted over. */
  costMiB: number;
  /** Of rssMiB, anonymous memory (the rest is the node binary's code and data as it is touched). */
  anonymousMiB: number;
  heapUsedMiB: number;
  externalMiB: number;
}

/** `dist` is the compiled tree (buildImageLayout); .ts paths are the sources, whose types Node strips. */
const importsOf = (dist: string): { label: string; code: string; over: ImportCost['over'] }[] => {
  const chain = [
    "await import('node:http2'); await import('node:tls');",
    "await import('@grpc/grpc-js');",
    "await import('protobufjs/minimal.js');",
    "await import('@grpc/proto-loader');",
    `(await import('${dist}/lib/proto.js')).agentflowProto();`,
    `await import('${dist}/agent/index.js');`,
    `await import('${dist}/agent/cli.js');`,
  ];
  const upTo = (n: number) => chain.slice(0, n).join(' ');
  return [
    { label: 'bare node', code: '', over: 'bare' },
    { label: '+ node:http2, node:tls', code: upTo(1), over: 'previous' },
    { label: '+ @grpc/grpc-js', code: upTo(2), over: 'previous' },
    { label: '+ protobufjs/minimal', code: upTo(3), over: 'previous' },
    { label: '+ @grpc/proto-loader (protobufjs full)', code: upTo(4), over: 'previous' },
    { label: '+ lib/proto agentflowProto() (parses the .proto)', code: upTo(5), over: 'previous' },
    { label: '+ agent/index (the SDK), compiled', code: upTo(6), over: 'previous' },
    { label: '+ agent/cli (agentflow agent), compiled', code: upTo(7), over: 'previous' },
    { label: 'yaml alone', code: "await import('yaml');", over: 'bare' },
    { label: 'one small .ts alone (type stripping)', code: "await import('./src/lib/time.ts');", over: 'bare' },
    { label: 'src/agent/cli.ts from source', code: "await import('./src/agent/cli.ts');", over: 'bare' },
    { label: 'src/operator/cli.ts from source', code: "await import('./src/operator/cli.ts');", over: 'bare' },
  ];
};

function importRss(code: string, nodeOptions: string): Omit<ImportCost, 'module' | 'over' | 'costMiB'> | undefined {
  const probe = `${code}
await new Promise((r) => setTimeout(r, 300));
globalThis.gc({ type: 'major', execution: 'sync', flavor: 'last-resort' });
const { readFileSync } = await import('node:fs');
const kb = (file, field) => Number(new RegExp(field + ':\\\\s+(\\\\d+)').exec(readFileSync(file, 'utf8'))[1]) / 1024;
const m = process.memoryUsage();
console.log(JSON.stringify({ rss: kb('/proc/self/status', 'VmRSS'), anon: kb('/proc/self/smaps_rollup', 'Anonymous'),
  heap: m.heapUsed / 2 ** 20, ext: m.external / 2 ** 20 }));`;
  try {
    const out = execFileSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', probe], {
      cwd: repoRoot,
      encoding: 'utf8',
      env: { ...process.env, NODE_OPTIONS: nodeOptions },
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    const r = JSON.parse(out.trim().split('\n').at(-1) ?? '') as {
      rss: number;
      anon: number;
      heap: number;
      ext: number;
    };
    return {
      rssMiB: round(r.rss, 1),
      anonymousMiB: round(r.anon, 1),
      heapUsedMiB: round(r.heap, 1),
      externalMiB: round(r.ext, 1),
    };
  } catch {
    return undefined;
  }
}

/** Import costs, module by module: a fresh node for each row, the smallest VmRSS of three runs. */
export function measureImports(nodeOptions: string): ImportCost[] {
  const dir = mkdtempSync(join(tmpdir(), 'agentflow-agent-imports-'));
  try {
    buildImageLayout(dir);
    const out: ImportCost[] = [];
    for (const { label, code, over } of importsOf(join(dir, 'dist'))) {
      const runs = [0, 1, 2].map(() => importRss(code, nodeOptions)).filter((r) => r !== undefined);
      const best = runs.sort((a, b) => a.rssMiB - b.rssMiB)[0];
      if (!best) continue;
      const base = over === 'bare' ? out[0] : out.at(-1);
      out.push({ module: label, over, ...best, costMiB: round(best.rssMiB - (base?.rssMiB ?? best.rssMiB), 1) });
    }
    return out;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      entry: { type: 'string', default: 'source,image' },
      'node-options': { type: 'string', default: AGENT_NODE_OPTIONS },
      'node-args': { type: 'string', default: '' },
      burst: { type: 'string', default: '20000' },
      'settle-seconds': { type: 'string', default: String(DEFAULT_SETTLE_MS / 1000) },
      imports: { type: 'boolean', default: false },
      json: { type: 'string' },
    },
  });
  const nodeOptions = values['node-options'];
  const nodeArgs = values['node-args'].split(' ').filter((a) => a !== '');
  if (values.imports) {
    const costs = measureImports(nodeOptions);
    printTable(
      `Import cost: a fresh node per row, VmRSS after a memory-reducing GC${nodeOptions ? `; NODE_OPTIONS=${nodeOptions}` : ''}`,
      ['module', 'RSS MiB', 'cost MiB', 'over', 'anonymous MiB', 'heap used MiB', 'external MiB'],
      costs.map((c) => [c.module, c.rssMiB, c.costMiB, c.over, c.anonymousMiB, c.heapUsedMiB, c.externalMiB]),
    );
    return;
  }
  const entries = values.entry.split(',').map((e) => e.trim());
  for (const e of entries) {
    if (e !== 'source' && e !== 'image') throw new Error(`--entry: unknown entry "${e}" (known: source, image)`);
  }
  const burstTasks = Number(values.burst);
  if (!Number.isInteger(burstTasks) || burstTasks < 0) throw new Error('--burst: expected an integer >= 0');
  const settleMs = Number(values['settle-seconds']) * 1000;
  if (!Number.isFinite(settleMs) || settleMs < 0) throw new Error('--settle-seconds: expected a number >= 0');
  const runs = await measureAgentRss({ entries: entries as AgentEntry[], nodeOptions, nodeArgs, burstTasks, settleMs });
  const cell = (r: RssSample) => `${r.median} (${r.anonymous})`;
  printTable(
    `Agent process VmRSS, MiB (anonymous in brackets; goals: idle <= ${IDLE_RSS_GOAL_MIB}, ` +
      `${IN_FLIGHT} in flight <= ${IN_FLIGHT_RSS_GOAL_MIB})` +
      (nodeOptions ? ` NODE_OPTIONS=${nodeOptions}` : '') +
      (nodeArgs.length > 0 ? ` node ${nodeArgs.join(' ')}` : ''),
    [
      'entry',
      'idle',
      `busy (${burstTasks} tasks)`,
      `${IN_FLIGHT} in flight`,
      `idle ${settleMs / 1000} s later`,
      'peak',
      'agent CPU ms/task',
      'tasks/s',
    ],
    runs.map((r) => [
      r.entry,
      cell(r.idle),
      r.busyMiB ?? 'n/a',
      cell(r.inFlight),
      cell(r.settled),
      r.peakMiB,
      r.agentCpuMsPerTask ?? 'n/a',
      r.burstTasksPerSec ?? 'n/a',
    ]),
  );
  if (values.json) {
    mkdirSync(join(values.json, '..'), { recursive: true });
    writeFileSync(values.json, `${JSON.stringify({ nodeOptions, nodeArgs, burstTasks, settleMs, runs }, null, 2)}\n`);
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
