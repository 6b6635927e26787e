import { closeSync, existsSync, openSync, readSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';

export interface LogSource {
  /** Log file of a container run (previous: the run before the current one). */
  logFile(namespace: string, pod: string, container: string, previous: boolean): string | undefined;
  /** Whether the container may still write (follow keeps the stream open). */
  running(namespace: string, pod: string, container: string): boolean;
}

/**
 * The one kubelet API the process kubelet serves: GET /containerLogs/{ns}/{pod}/{container}
 * with follow, tailLines, limitBytes and previous, so `kubectl logs` works through
 * the API server. Only clients with a certificate from the cluster CA (the API
 * server's kubelet client certificate) are served.
 */
export class LogServer {
  private server: Server | undefined;
  port = 0;
  private readonly tls: { cert: Buffer; key: Buffer; ca: Buffer };
  private readonly source: LogSource;

  constructor(tls: { cert: Buffer; key: Buffer; ca: Buffer }, source: LogSource) {
    this.tls = tls;
    this.source = source;
  }

  async start(port = 0): Promise<number> {
    this.server = createServer({ ...this.tls, requestCert: true, rejectUnauthorized: true }, (req, res) => {
      const url = new URL(req.url ?? '/', 'https://kubelet');
      const m = /^\/containerLogs\/([^/]+)\/([^/]+)\/([^/]+)$/.exec(url.pathname);
      if (req.method !== 'GET' || !m) {
        res.writeHead(404).end('not found: the process kubelet serves only /containerLogs\n');
        return;
      }
      const [ns, pod, container] = m.slice(1).map(decodeURIComponent) as [string, string, string];
      const q = url.searchParams;
      const file = this.source.logFile(ns, pod, container, q.get('previous') === 'true');
      if (!file || !existsSync(file)) {
        res.writeHead(404).end(`container "${container}" in pod "${pod}" has no logs\n`);
        return;
      }
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      const tail = q.has('tailLines') ? Number(q.get('tailLines')) : undefined;
      const limit = q.has('limitBytes') ? Number(q.get('limitBytes')) : undefined;
      let text = readFrom(file, 0);
      let offset = Buffer.byteLength(text);
      if (tail !== undefined && tail >= 0) text = lastLines(text, tail);
      if (limit !== undefined && limit >= 0) text = Buffer.from(text).subarray(0, limit).toString();
      res.write(text);
      if (q.get('follow') !== 'true') {
        res.end();
        return;
      }
      const timer = setInterval(() => {
        const more = readFrom(file, offset);
        offset += Buffer.byteLength(more);
        if (more) res.write(more);
        if (!this.source.running(ns, pod, container)) {
          clearInterval(timer);
          res.end();
        }
      }, 200);
      req.on('close', () => clearInterval(timer));
    });
    await new Promise<void>((resolve) => this.server?.listen(port, '0.0.0.0', resolve));
    this.port = (this.server.address() as AddressInfo).port;
    return this.port;
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}

function readFrom(file: string, offset: number): string {
  const size = statSync(file).size;
  if (size <= offset) return '';
  const fd = openSync(file, 'r');
  try {
    const buf = Buffer.alloc(size - offset);
    readSync(fd, buf, 0, buf.length, offset);
    return buf.toString('utf8');
  } finally {
    closeSync(fd);
  }
}

function lastLines(text: string, n: number): string {
  if (n === 0) return '';
  const lines = text.endsWith('\n') ? text.slice(0, -1).split('\n') : text.split('\n');
  return `${lines.slice(-n).join('\n')}\n`;
}
