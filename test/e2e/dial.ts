import { connect, createServer } from 'node:net';
import { POD_NETWORK } from '../cluster/pod-network.ts';

// TCP reachability as NetworkPolicy tests see it, from this machine (dial) and from a pod
// (probeCommand: the same logic as a `node -e` script for an image with Node), and a gate that
// holds a probe pod back until the test lets it dial (probeGate).

export type Reach = 'open' | 'blocked';

export interface Target {
  host: string;
  port: number;
}

/** How a TCP connection to host:port ends within 3 s: 'open', or 'blocked' (refused, reset, unreachable or no answer). */
export function dial(host: string, port: number): Promise<Reach> {
  return new Promise((resolve) => {
    const socket = connect({ host, port, timeout: 3_000 });
    const end = (r: Reach) => {
      socket.destroy();
      resolve(r);
    };
    socket.once('connect', () => end('open'));
    socket.once('timeout', () => end('blocked'));
    socket.once('error', () => end('blocked'));
  });
}

/**
 * dial's body as a pod runs it: first (with a gate) it sends the gate its hostname (its pod's name)
 * and waits for "go"; then it prints {what: Reach} for every target, as JSON, and exits 0.
 */
const PROBE = `async (targets, gate) => {
  const { connect } = require('node:net');
  if (gate) {
    await new Promise((resolve, reject) => {
      const s = connect(gate, () => s.write(require('node:os').hostname() + '\\n'));
      let got = '';
      s.on('data', (d) => { got += d; if (got.includes('go\\n')) { s.destroy(); resolve(); } });
      s.on('error', reject);
      s.on('close', () => reject(new Error('the gate closed without a go')));
    });
  }
  const dial = (host, port) => new Promise((resolve) => {
    const socket = connect({ host, port, timeout: 3000 });
    const end = (r) => { socket.destroy(); resolve(r); };
    socket.once('connect', () => end('open'));
    socket.once('timeout', () => end('blocked'));
    socket.once('error', () => end('blocked'));
  });
  const out = {};
  for (const [what, t] of Object.entries(targets)) out[what] = await dial(t.host, t.port);
  process.stdout.write(JSON.stringify(out));
}`;

/** A container command that dials every target from inside the pod (see PROBE), after the gate's go if given. */
export function probeCommand(targets: Record<string, Target>, gate?: Target): string[] {
  return ['node', '-e', `(${PROBE})(${JSON.stringify(targets)}, ${JSON.stringify(gate ?? null)})`];
}

export interface ProbeGate extends Target {
  /** Why a pod was never let go (ready rejected), by pod name. */
  readonly refused: Map<string, Error>;
  close(): Promise<void>;
}

/**
 * A listener on the pod network's host address where probe pods wait: a pod is told "go" once
 * ready(its name) resolves. A pod that dials as soon as it starts races the policy engine, which
 * learns its address only then; the test's ready waits for the engine instead (pod-network.ts's
 * firewalled).
 */
export async function probeGate(ready: (pod: string) => Promise<unknown>): Promise<ProbeGate> {
  const refused = new Map<string, Error>();
  const server = createServer((socket) => {
    let got = '';
    socket.on('error', () => socket.destroy());
    socket.on('data', (d) => {
      got += d;
      const nl = got.indexOf('\n');
      if (nl < 0) return;
      const pod = got.slice(0, nl);
      socket.removeAllListeners('data');
      ready(pod).then(
        () => socket.end('go\n'),
        (err: Error) => {
          refused.set(pod, err);
          socket.destroy();
        },
      );
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, POD_NETWORK.hostIp, resolve);
  });
  const address = server.address();
  if (!address || typeof address === 'string') throw new Error('probe gate: no TCP address');
  return {
    host: POD_NETWORK.hostIp,
    port: address.port,
    refused,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
