import { readFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import { parse as parseYaml } from 'yaml';

export interface Credentials {
  server: string;
  ca: string | Buffer;
  cert?: string | Buffer;
  key?: string | Buffer;
  token?: string;
}

export class KubeError extends Error {
  readonly status: number;
  readonly reason: string;
  readonly body: unknown;

  constructor(status: number, reason: string, message: string, body: unknown) {
    super(message);
    this.name = 'KubeError';
    this.status = status;
    this.reason = reason;
    this.body = body;
  }
}

export interface WatchEvent<T> {
  type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';
  object: T;
}

/**
 * A deliberately small Kubernetes REST client for the test harness (the process
 * kubelet and readiness checks). The operator uses @kubernetes/client-node; the
 * harness stays independent of it so it can test that code honestly.
 */
export class RestClient {
  private readonly agent: Agent;

  readonly creds: Credentials;

  constructor(creds: Credentials) {
    this.creds = creds;
    this.agent = new Agent({
      keepAlive: true,
      ca: creds.ca,
      ...(creds.cert ? { cert: creds.cert } : {}),
      ...(creds.key ? { key: creds.key } : {}),
    });
  }

  static fromKubeconfig(path: string): RestClient {
    const cfg = parseYaml(readFileSync(path, 'utf8')) as {
      clusters: { cluster: { server: string; 'certificate-authority-data': string } }[];
      users: { user: { 'client-certificate-data'?: string; 'client-key-data'?: string; token?: string } }[];
    };
    const cluster = cfg.clusters[0]?.cluster;
    const user = cfg.users[0]?.user;
    if (!cluster || !user) throw new Error(`kubeconfig ${path} has no cluster or user`);
    const b64 = (s: string | undefined) => (s ? Buffer.from(s, 'base64') : undefined);
    const creds: Credentials = {
      server: cluster.server,
      ca: Buffer.from(cluster['certificate-authority-data'], 'base64'),
    };
    const cert = b64(user['client-certificate-data']);
    const key = b64(user['client-key-data']);
    if (cert) creds.cert = cert;
    if (key) creds.key = key;
    if (user.token) creds.token = user.token;
    return new RestClient(creds);
  }

  close(): void {
    this.agent.destroy();
  }

  async request<T = unknown>(
    method: string,
    path: string,
    body?: unknown,
    contentType = 'application/json',
  ): Promise<T> {
    const url = new URL(path, this.creds.server);
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise<T>((resolve, reject) => {
      const req = request(
        url,
        {
          method,
          agent: this.agent,
          headers: {
            Accept: 'application/json',
            ...(payload ? { 'Content-Type': contentType, 'Content-Length': payload.length } : {}),
            ...(this.creds.token ? { Authorization: `Bearer ${this.creds.token}` } : {}),
          },
          timeout: 30_000,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: unknown = text;
            try {
              parsed = text ? JSON.parse(text) : undefined;
            } catch {
              // plain-text answers (e.g. /readyz) stay strings
            }
            const status = res.statusCode ?? 0;
            if (status >= 200 && status < 300) resolve(parsed as T);
            else {
              const st = parsed as { reason?: string; message?: string } | undefined;
              reject(
                new KubeError(
                  status,
                  st?.reason ?? String(status),
                  `${method} ${url.pathname}: ${status} ${st?.message ?? text}`,
                  parsed,
                ),
              );
            }
          });
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new Error(`${method} ${url.pathname}: timed out`)));
      req.on('error', reject);
      req.end(payload);
    });
  }

  get<T = unknown>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }

  /** GET that answers undefined for 404 instead of throwing. */
  async getOrUndefined<T = unknown>(path: string): Promise<T | undefined> {
    try {
      return await this.get<T>(path);
    } catch (err) {
      if (err instanceof KubeError && err.status === 404) return undefined;
      throw err;
    }
  }

  post<T = unknown>(path: string, body: unknown): Promise<T> {
    return this.request<T>('POST', path, body);
  }

  put<T = unknown>(path: string, body: unknown): Promise<T> {
    return this.request<T>('PUT', path, body);
  }

  mergePatch<T = unknown>(path: string, body: unknown): Promise<T> {
    return this.request<T>('PATCH', path, body, 'application/merge-patch+json');
  }

  strategicPatch<T = unknown>(path: string, body: unknown): Promise<T> {
    return this.request<T>('PATCH', path, body, 'application/strategic-merge-patch+json');
  }

  delete<T = unknown>(path: string, body?: unknown): Promise<T> {
    return this.request<T>('DELETE', path, body);
  }

  /**
   * Streams watch events until the server closes the stream, the signal aborts,
   * or an error occurs. Resolves when the stream ends; the caller re-lists and
   * re-watches (the harness never assumes a watch lasts).
   */
  /**
   * A GET whose body is read as it comes (a followed log): `onText` gets each chunk; resolves with the
   * status when the server ends the answer (a non-2xx answer: its whole body is the one chunk).
   */
  stream(path: string, onText: (text: string) => void, signal?: AbortSignal): Promise<number> {
    const url = new URL(path, this.creds.server);
    return new Promise<number>((resolve, reject) => {
      const req = request(url, {
        method: 'GET',
        agent: this.agent,
        headers: this.creds.token ? { Authorization: `Bearer ${this.creds.token}` } : {},
        ...(signal ? { signal } : {}),
      });
      req.on('response', (res) => {
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => onText(chunk));
        res.on('end', () => resolve(res.statusCode ?? 0));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end();
    });
  }

  watch<T>(path: string, onEvent: (e: WatchEvent<T>) => void, signal?: AbortSignal): Promise<void> {
    const url = new URL(path, this.creds.server);
    url.searchParams.set('watch', 'true');
    return new Promise<void>((resolve, reject) => {
      const req = request(url, {
        method: 'GET',
        agent: this.agent,
        headers: {
          Accept: 'application/json',
          ...(this.creds.token ? { Authorization: `Bearer ${this.creds.token}` } : {}),
        },
        ...(signal ? { signal } : {}),
      });
      req.on('response', (res) => {
        if (res.statusCode !== 200) {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () =>
            reject(new KubeError(res.statusCode ?? 0, 'WatchFailed', Buffer.concat(chunks).toString(), undefined)),
          );
          return;
        }
        let buf = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          buf += chunk;
          for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
            const line = buf.slice(0, nl).trim();
            buf = buf.slice(nl + 1);
            if (line) onEvent(JSON.parse(line) as WatchEvent<T>);
          }
        });
        res.on('end', () => resolve());
        res.on('error', (err) => (signal?.aborted ? resolve() : reject(err)));
      });
      req.on('error', (err) => (signal?.aborted ? resolve() : reject(err)));
      req.end();
    });
  }
}
