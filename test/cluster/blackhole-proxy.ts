// A TCP forwarder on loopback that can be cut like a network path: while cut,
// nothing passes in either direction and no connection is refused or closed
// (the proxy stops reading, so bytes wait in kernel buffers as they would on a
// stalled path), and both ends must notice by their own keepalives and
// timeouts. Healing lets the held bytes flow again; connections opened during
// the cut are dropped, as a real partition would have timed them out.
import { connect, createServer, type Server, type Socket } from 'node:net';

export class BlackholeProxy {
  private server: Server | undefined;
  private readonly pairs = new Set<{ client: Socket; upstream: Socket | undefined }>();
  private isCut = false;
  port = 0;

  private readonly targetHost: string;
  private readonly targetPort: number;

  constructor(targetHost: string, targetPort: number) {
    this.targetHost = targetHost;
    this.targetPort = targetPort;
  }

  get cut(): boolean {
    return this.isCut;
  }

  async start(): Promise<number> {
    this.server = createServer((client) => this.accept(client));
    await new Promise<void>((resolve) => this.server?.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as { port: number }).port;
    return this.port;
  }

  private accept(client: Socket): void {
    const pair: { client: Socket; upstream: Socket | undefined } = { client, upstream: undefined };
    this.pairs.add(pair);
    const drop = () => {
      client.destroy();
      pair.upstream?.destroy();
      this.pairs.delete(pair);
    };
    client.on('error', drop);
    client.on('close', drop);
    if (this.isCut) {
      client.pause(); // held, never answered
      return;
    }
    const upstream = connect(this.targetPort, this.targetHost);
    pair.upstream = upstream;
    upstream.on('error', drop);
    upstream.on('close', drop);
    // Not pipe(): its drain handling would resume a source that partition() paused.
    client.on('data', (d) => upstream.write(d));
    upstream.on('data', (d) => client.write(d));
  }

  /** From now on nothing passes either way. */
  partition(): void {
    this.isCut = true;
    for (const p of this.pairs) {
      p.client.pause();
      p.upstream?.pause();
    }
  }

  /** Traffic flows again on connections made before the cut; ones made during it are dropped. */
  heal(): void {
    this.isCut = false;
    for (const p of this.pairs) {
      if (!p.upstream) {
        p.client.destroy();
        this.pairs.delete(p);
        continue;
      }
      p.client.resume();
      p.upstream.resume();
    }
  }

  async close(): Promise<void> {
    for (const p of this.pairs) {
      p.client.destroy();
      p.upstream?.destroy();
    }
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}
