import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { binaryPath } from './binaries.ts';
import { ManagedProcess, waitFor } from './managed-process.ts';
import { canConnect, freePort } from './ports.ts';

export interface EtcdOptions {
  dir: string;
  name?: string;
  /** Skip fsync: fine for throw-away test data, wrong for benchmarks of durability. */
  unsafeNoFsync?: boolean;
  /** Serve clients over TLS and require a client certificate signed by `caFile`. */
  tls?: { certFile: string; keyFile: string; caFile: string };
  /** A member of a cluster (EtcdCluster): its ports and every member's `name=peerURL`. */
  member?: { clientPort: number; peerPort: number; initialCluster: string };
  /** More addresses to serve clients on, at the same port (the pod network's host address). */
  extraClientIps?: string[];
}

/** One real etcd member on free loopback ports. */
export class EtcdServer {
  readonly name: string;
  clientPort = 0;
  peerPort = 0;
  private proc: ManagedProcess | undefined;

  private readonly opts: EtcdOptions;

  constructor(opts: EtcdOptions) {
    this.opts = opts;
    this.name = opts.name ?? 'etcd';
  }

  get endpoint(): string {
    return `${this.opts.tls ? 'https' : 'http'}://127.0.0.1:${this.clientPort}`;
  }

  /** The client URL at another address it serves (extraClientIps). */
  endpointAt(ip: string): string {
    return `${this.opts.tls ? 'https' : 'http'}://${ip}:${this.clientPort}`;
  }

  get pid(): number | undefined {
    return this.proc?.pid;
  }

  get logFile(): string {
    return join(this.opts.dir, `${this.name}.log`);
  }

  async start(): Promise<void> {
    mkdirSync(this.opts.dir, { recursive: true });
    // A restart keeps its ports (and its data dir): clients reconnect to the same address.
    if (!this.clientPort) this.clientPort = this.opts.member?.clientPort ?? (await freePort());
    if (!this.peerPort) this.peerPort = this.opts.member?.peerPort ?? (await freePort());
    const peer = `http://127.0.0.1:${this.peerPort}`;
    const args = [
      `--name=${this.name}`,
      `--data-dir=${join(this.opts.dir, `${this.name}.data`)}`,
      `--listen-client-urls=${[this.endpoint, ...(this.opts.extraClientIps ?? []).map((ip) => this.endpointAt(ip))].join(',')}`,
      `--advertise-client-urls=${this.endpoint}`,
      `--listen-peer-urls=${peer}`,
      `--initial-advertise-peer-urls=${peer}`,
      `--initial-cluster=${this.opts.member?.initialCluster ?? `${this.name}=${peer}`}`,
      `--initial-cluster-token=${this.opts.member ? 'agentflow-test-cluster' : this.name}`,
      '--initial-cluster-state=new',
      '--log-level=warn',
      // Keeps a small test database small.
      '--quota-backend-bytes=2147483648',
    ];
    // A restart joins the cluster its data dir already records.
    if (existsSync(join(this.opts.dir, `${this.name}.data`, 'member'))) {
      args[args.indexOf('--initial-cluster-state=new')] = '--initial-cluster-state=existing';
    }
    if (this.opts.unsafeNoFsync) args.push('--unsafe-no-fsync');
    const tls = this.opts.tls;
    if (tls) {
      args.push(
        `--cert-file=${tls.certFile}`,
        `--key-file=${tls.keyFile}`,
        `--trusted-ca-file=${tls.caFile}`,
        '--client-cert-auth',
      );
    }
    this.proc = new ManagedProcess({ name: this.name, command: binaryPath('etcd'), args, logFile: this.logFile });
    this.proc.start();
    await waitFor(
      `${this.name} to answer /health on ${this.endpoint}`,
      async () => {
        this.proc?.assertAlive();
        // Over TLS the health endpoint wants a client certificate too: a listening port is enough.
        if (tls) return canConnect(this.clientPort);
        // A member of a cluster that is still forming has no leader yet: a listening port is enough.
        if (this.opts.member) return canConnect(this.clientPort);
        const res = await fetch(`${this.endpoint}/health`);
        return res.ok && ((await res.json()) as { health?: string }).health === 'true';
      },
      30_000,
    );
  }

  async stop(): Promise<void> {
    await this.proc?.stop(5_000);
  }

  /** Sends a signal to etcd (SIGSTOP freezes it, SIGCONT resumes it, SIGKILL is a crash). */
  signal(sig: NodeJS.Signals): void {
    const pid = this.proc?.pid;
    if (!pid) return;
    try {
      process.kill(pid, sig);
    } catch (err) {
      // Already gone (crashed and not restarted): nothing to signal.
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
  }

  /** kill -9, then waits until the process is gone (start() brings it back on the same ports and data). */
  async crash(): Promise<void> {
    await this.proc?.kill();
  }
}

/**
 * A real etcd cluster of `size` members on loopback ports (plain HTTP): the
 * chaos suite kills, freezes and restarts members of it without touching the
 * harness's own etcd.
 */
export class EtcdCluster {
  readonly members: EtcdServer[] = [];
  private readonly dir: string;
  private readonly size: number;

  constructor(dir: string, size = 3) {
    this.dir = dir;
    this.size = size;
  }

  get endpoints(): string[] {
    return this.members.map((m) => m.endpoint);
  }

  async start(): Promise<void> {
    const ports = [];
    for (let i = 0; i < this.size; i++) ports.push({ clientPort: await freePort(), peerPort: await freePort() });
    const initialCluster = ports.map((p, i) => `m${i}=http://127.0.0.1:${p.peerPort}`).join(',');
    for (const [i, p] of ports.entries()) {
      this.members.push(
        new EtcdServer({ dir: this.dir, name: `m${i}`, unsafeNoFsync: true, member: { ...p, initialCluster } }),
      );
    }
    await Promise.all(this.members.map((m) => m.start()));
    await this.healthy();
  }

  /** Waits until every running member answers /health with a leader. */
  async healthy(timeoutMs = 30_000, members = this.members): Promise<void> {
    await waitFor(
      'the etcd cluster to be healthy',
      async () => {
        for (const m of members) {
          const res = await fetch(`${m.endpoint}/health`);
          if (!res.ok || ((await res.json()) as { health?: string }).health !== 'true') return false;
        }
        return true;
      },
      timeoutMs,
    );
  }

  signalAll(sig: NodeJS.Signals): void {
    for (const m of this.members) m.signal(sig);
  }

  async stop(): Promise<void> {
    this.signalAll('SIGCONT');
    await Promise.all(this.members.map((m) => m.stop()));
  }
}
