import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { inject } from 'vitest';
import { StateStore } from '../../../src/state/index.ts';
import { etcdClientEnv, stateEtcdOf, stateStoreOptions } from '../../cluster/state-etcd.ts';

/**
 * A store on the harness's agentflow etcd under a prefix of its own, over TLS
 * as the operator's etcd user (`root` for tests that administer etcd).
 */
export function testStore(
  prefix = `/test-${randomBytes(4).toString('hex')}`,
  as: 'operator' | 'root' = 'operator',
): StateStore {
  return new StateStore({ ...stateStoreOptions(inject('cluster'), as), prefix });
}

export function etcdEndpoint(): string {
  return stateEtcdOf(inject('cluster')).endpoint;
}

/** The operator's etcd client certificate for a fixture process that uses the state layer (holder.ts). */
export function fixtureEtcdEnv(): Record<string, string> {
  return etcdClientEnv(inject('cluster'));
}

/** A child process speaking JSON lines on stdout (see test/fixtures/state/holder.ts). */
export class JsonLinesChild {
  readonly child: ChildProcess;
  private readonly lines: Record<string, unknown>[] = [];
  private waiters: (() => void)[] = [];

  /** `env` adds to this process's environment (e.g. fixtureEtcdEnv() for a fixture that uses etcd). */
  constructor(script: string, args: string[], env: Record<string, string> = {}) {
    this.child = spawn(process.execPath, [script, ...args], {
      stdio: ['pipe', 'pipe', 'inherit'],
      env: { ...process.env, ...env },
    });
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

/**
 * Rewrites what etcd holds for entry `seq` of an audit log (an attacker with etcd access): finds the
 * block holding it, lets `change` edit the parsed entry (or return undefined to cut it out of the
 * block) and puts the block back. Returns the block's key.
 */
export async function tamperAuditEntry(
  store: StateStore,
  base: string,
  seq: number,
  change: (entry: Record<string, unknown>) => Record<string, unknown> | undefined,
): Promise<string> {
  const blocks = (await store.list(`${base}/e/`)).entries;
  const block = blocks.filter((b) => Number(b.key.slice(-12)) <= seq).pop();
  if (!block) throw new Error(`no block of ${base} holds seq ${seq}`);
  const parsed = JSON.parse(block.value) as unknown;
  const items = (Array.isArray(parsed) ? parsed : [parsed]) as Record<string, unknown>[];
  const i = seq - Number(block.key.slice(-12));
  const item = items[i];
  if (!item) throw new Error(`block ${block.key} has no entry ${seq}`);
  const changed = change(item);
  if (changed === undefined) items.splice(i, 1);
  else items[i] = changed;
  await store.client.put(block.key).value(JSON.stringify(items));
  return block.key;
}
