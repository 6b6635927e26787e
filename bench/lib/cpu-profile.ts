// Reads a V8 CPU profile (.cpuprofile: what `node --cpu-prof` and the
// inspector's Profiler.stop produce) into where the time went: by category
// (gRPC, protobuf, etcd client, agentflow code, GC, idle...), by
// function (self time) and inclusive time of chosen functions.

import { readdirSync, readFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { join } from 'node:path';
import { repoRoot } from '../../test/cluster/binaries.ts';

/** Starts V8's sampling profiler in this process; the returned function stops it and hands over the profile. */
export async function startProfiler(intervalUs = 200): Promise<() => Promise<CpuProfile>> {
  const session = new Session();
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.setSamplingInterval', { interval: intervalUs });
  await session.post('Profiler.start');
  return async () => {
    const { profile } = await session.post('Profiler.stop');
    session.disconnect();
    return profile as CpuProfile;
  };
}

// V8 does not sample JSON.parse / JSON.stringify as frames of their own: their time shows as the calling
// function's self time (e.g. Dispatcher.onResult parses each output).

export interface CpuProfile {
  nodes: {
    id: number;
    callFrame: { functionName: string; url: string; lineNumber: number };
    hitCount?: number;
    children?: number[];
  }[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

type Node = CpuProfile['nodes'][number];

export interface ProfileSummary {
  wallMs: number;
  /** Sampled time not idle. */
  busyMs: number;
  categories: { category: string; ms: number; shareOfBusy: number }[];
  topSelf: { fn: string; where: string; category: string; ms: number; shareOfBusy: number }[];
}

/** Message names of agentflow's wire protocol (protobufjs generates `Name$encode` etc. for each, with no url). */
const AGENTFLOW_MESSAGES = new Set(
  readdirSync(join(repoRoot, 'proto/agentflow/v1'))
    .filter((f) => f.endsWith('.proto'))
    .flatMap((f) => [...readFileSync(join(repoRoot, 'proto/agentflow/v1', f), 'utf8').matchAll(/^message (\w+)/gm)])
    .map((m) => m[1] as string),
);
const generated = (fn: string) => /^(\w+)\$(encode|decode|toObject|fromObject|verify)$/.exec(fn)?.[1];

const CATEGORIES: [string, (url: string, fn: string) => boolean][] = [
  ['idle (waiting in epoll)', (_u, fn) => fn === '(idle)'],
  ['garbage collection', (_u, fn) => fn === '(garbage collector)'],
  ['(program): native code outside JS (Node C++ HTTP/2, sockets, V8)', (_u, fn) => fn === '(program)'],
  ['gRPC: grpc-js (channels, calls, framing)', (u) => u.includes('/@grpc/grpc-js/')],
  ['protobuf: agentflow wire messages', (u, fn) => u === '' && AGENTFLOW_MESSAGES.has(generated(fn) ?? '')],
  ['protobuf: etcd messages', (u, fn) => u === '' && generated(fn) !== undefined],
  ['protobuf runtime (protobufjs, long)', (u) => /\/(protobufjs|@protobufjs|long|@grpc\/proto-loader)\//.test(u)],
  ['etcd3 client (request building, leases, watch)', (u) => u.includes('/etcd3/')],
  ['agentflow dispatcher', (u) => u.includes('/src/dispatcher/')],
  ['agentflow workflow engine (runs, expressions)', (u) => u.includes('/src/workflow/')],
  ['agentflow operator (controllers, kube client)', (u) => u.includes('/src/operator/')],
  ['CEL (@bufbuild/cel)', (u) => u.includes('/@bufbuild/cel/')],
  ['agentflow state layer (claims, txns)', (u) => u.includes('/src/state/')],
  ['agentflow agent runtime', (u) => u.includes('/src/agent/')],
  ['agentflow lib (proto, log)', (u) => u.includes('/src/lib/')],
  ['bench driver / task code', (u) => u.includes('/bench/')],
  ['Node HTTP/2 (core)', (u) => /node:(internal\/)?http2/.test(u)],
  ['Node streams, sockets, buffers (core)', (u) => /node:(internal\/)?(stream|net|buffer|streams)/.test(u)],
  ['Node timers, microtasks, events (core)', (u) => /node:(internal\/)?(timers|process|events|async_hooks)/.test(u)],
  ['Node core, other', (u) => u.startsWith('node:')],
  ['other dependencies', (u) => u.includes('/node_modules/')],
  ['builtins, other', () => true],
];

export function categorize(url: string, fn: string): string {
  for (const [name, test] of CATEGORIES) if (test(url, fn)) return name;
  return 'builtins, other';
}

function selfMs(p: CpuProfile): Map<number, number> {
  const out = new Map<number, number>();
  const samples = p.samples ?? [];
  const deltas = p.timeDeltas ?? [];
  // A sample's time is the gap until the next sample (microseconds).
  for (let i = 0; i < samples.length; i++) {
    const dt = (deltas[i + 1] ?? 0) / 1000;
    const id = samples[i] as number;
    out.set(id, (out.get(id) ?? 0) + dt);
  }
  return out;
}

const where = (n: Node) => {
  const u = n.callFrame.url.replace(/^file:\/\/.*?\/(node_modules|src|bench)\//, '$1/');
  return u ? `${u}:${n.callFrame.lineNumber + 1}` : '(native)';
};

export function summarizeProfile(p: CpuProfile, top = 15): ProfileSummary {
  const self = selfMs(p);
  const byCat = new Map<string, number>();
  const byFn = new Map<string, { fn: string; where: string; category: string; ms: number }>();
  let idle = 0;
  let total = 0;
  for (const n of p.nodes) {
    const ms = self.get(n.id) ?? 0;
    if (ms === 0) continue;
    total += ms;
    const cat = categorize(n.callFrame.url, n.callFrame.functionName);
    if (n.callFrame.functionName === '(idle)') idle += ms;
    byCat.set(cat, (byCat.get(cat) ?? 0) + ms);
    const fn = n.callFrame.functionName || '(anonymous)';
    const key = `${fn}@${where(n)}`;
    const e = byFn.get(key) ?? { fn, where: where(n), category: cat, ms: 0 };
    e.ms += ms;
    byFn.set(key, e);
  }
  const busy = total - idle;
  const share = (ms: number) => Math.round((ms / busy) * 1000) / 10;
  return {
    wallMs: Math.round((p.endTime - p.startTime) / 1000),
    busyMs: Math.round(busy),
    categories: [...byCat]
      .map(([category, ms]) => ({
        category,
        ms: Math.round(ms),
        shareOfBusy: category.startsWith('idle') ? 0 : share(ms),
      }))
      .sort((a, b) => b.ms - a.ms),
    topSelf: [...byFn.values()]
      .filter((f) => f.fn !== '(idle)')
      .sort((a, b) => b.ms - a.ms)
      .slice(0, top)
      .map((f) => ({ ...f, ms: Math.round(f.ms), shareOfBusy: share(f.ms) })),
  };
}

/**
 * CPU time spent in (and under) functions whose name matches, counted once
 * per stack (recursion is not double counted). Async functions count only
 * their synchronous stretches: the awaits themselves are not CPU.
 */
export function inclusiveMs(p: CpuProfile, match: (fn: string, url: string) => boolean): number {
  const self = selfMs(p);
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const childIds = new Set(p.nodes.flatMap((n) => n.children ?? []));
  let total = 0;
  const walk = (n: Node, inside: boolean) => {
    const here = inside || match(n.callFrame.functionName, n.callFrame.url);
    if (here) total += self.get(n.id) ?? 0;
    for (const c of n.children ?? []) {
      const child = byId.get(c);
      if (child) walk(child, here);
    }
  };
  for (const n of p.nodes) if (!childIds.has(n.id)) walk(n, false);
  return Math.round(total);
}
