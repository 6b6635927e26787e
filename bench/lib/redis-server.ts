import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { ManagedProcess, waitFor } from '../../test/cluster/managed-process.ts';
import { freePort } from '../../test/cluster/ports.ts';

export type AppendFsync = 'everysec' | 'always';

/** A redis-server of our own: loopback, a free port, data in `dir`, AOF on, no RDB snapshots. */
export class RedisServer {
  port = 0;
  private proc: ManagedProcess | undefined;
  private readonly dir: string;
  readonly appendfsync: AppendFsync;

  constructor(dir: string, appendfsync: AppendFsync) {
    this.dir = dir;
    this.appendfsync = appendfsync;
  }

  get pid(): number | undefined {
    return this.proc?.pid;
  }

  async start(): Promise<void> {
    mkdirSync(this.dir, { recursive: true });
    this.port = await freePort();
    const args = [
      '--bind',
      '127.0.0.1',
      '--port',
      String(this.port),
      '--dir',
      this.dir,
      '--appendonly',
      'yes',
      '--appendfsync',
      this.appendfsync,
      // AOF is the durability under test; background RDB snapshots would only add noise.
      '--save',
      '',
      // What BullMQ requires: never evict its keys.
      '--maxmemory-policy',
      'noeviction',
      '--daemonize',
      'no',
    ];
    this.proc = new ManagedProcess({
      name: 'redis',
      command: 'redis-server',
      args,
      logFile: join(this.dir, 'redis.log'),
    });
    this.proc.start();
    await waitFor(
      `redis-server to answer PING on port ${this.port}`,
      async () => {
        this.proc?.assertAlive();
        const client = this.client({ lazyConnect: true, retryStrategy: () => null });
        try {
          await client.connect();
          return (await client.ping()) === 'PONG';
        } finally {
          client.disconnect();
        }
      },
      15_000,
    );
  }

  /** A connection as BullMQ wants it (maxRetriesPerRequest: null). */
  client(extra: { lazyConnect?: boolean; retryStrategy?: () => null } = {}): Redis {
    const client = new Redis({ host: '127.0.0.1', port: this.port, maxRetriesPerRequest: null, ...extra });
    // Connection errors surface through BullMQ's own calls; without a listener ioredis prints each retry.
    client.on('error', () => undefined);
    return client;
  }

  async stop(): Promise<void> {
    await this.proc?.stop(5_000);
  }
}
