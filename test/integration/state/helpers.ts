import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { inject } from 'vitest';
import { StateStore } from '../../../src/state/index.ts';

/** A store on the harness's agentflow etcd under a prefix of its own. */
export function testStore(prefix = `/test-${randomBytes(4).toString('hex')}`): StateStore {
  const endpoint = inject('cluster').stateEtcdEndpoint;
  if (!endpoint) throw new Error('the control plane has no agentflow etcd');
  return new StateStore({ endpoints: [endpoint], prefix });
}

export function etcdEndpoint(): string {
  return inject('cluster').stateEtcdEndpoint as string;
}

/** A child process speaking JSON lines on stdout (see test/fixtures/state/holder.ts). */
export class JsonLinesChild {
  readonly child: ChildProcess;
  private readonly lines: Record<string, unknown>[] = [];
  private waiters: (() => void)[] = [];

  constructor(script: string, args: string[]) {
    this.child = spawn(process.execPath, [script, ...args], { stdio: ['pipe', 'pipe', 'inherit'] });
    createInterface({ input: this.child.stdout as NodeJS.ReadableStream }).on('line', (l) => {
      this.lines.push(JSON.parse(l) as Record<string, unknown>);
      for (const w of this.waiters.splice(0)) w();
    });
  }

  async next(event: string, timeoutMs = 15_000): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.lines.findIndex((l) => l.event === event || (event === '*' && l));
      if (i >= 0) return this.lines.splice(i, 1)[0] as Record<string, unknown>;
      if (Date.now() > deadline)
        throw new Error(`no "${event}" line within ${timeoutMs} ms (got ${JSON.stringify(this.lines)})`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 100);
      });
    }
  }

  send(line: string): void {
    this.child.stdin?.write(`${line}\n`);
  }

  kill(signal: NodeJS.Signals): void {
    this.child.kill(signal);
  }
}
