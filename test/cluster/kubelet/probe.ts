import { spawn } from 'node:child_process';
import { request } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect } from 'node:net';
import type { Container, Probe } from './types.ts';

export interface ProbeResult {
  ok: boolean;
  message: string;
}

/** Runs one probe attempt against a container, like the kubelet's prober. */
export async function runProbe(
  probe: Probe,
  container: Container,
  podIP: string,
  env: NodeJS.ProcessEnv,
  /** argv prefix that enters the container's mount namespace, for exec probes. */
  enter: string[] = [],
): Promise<ProbeResult> {
  const timeoutMs = (probe.timeoutSeconds ?? 1) * 1000;
  const port = (p: number | string): number => {
    if (typeof p === 'number') return p;
    const named = container.ports?.find((x) => x.name === p);
    if (!named) throw new Error(`named port "${p}" not found in container "${container.name}"`);
    return named.containerPort;
  };
  try {
    if (probe.httpGet) {
      const g = probe.httpGet;
      const scheme = (g.scheme ?? 'HTTP').toUpperCase();
      const url = `${scheme === 'HTTPS' ? 'https' : 'http'}://${g.host ?? podIP}:${port(g.port)}${g.path ?? '/'}`;
      const status = await httpStatus(url, timeoutMs, scheme === 'HTTPS');
      return { ok: status >= 200 && status < 400, message: `HTTP probe ${url} answered ${status}` };
    }
    if (probe.tcpSocket) {
      const p = port(probe.tcpSocket.port);
      await tcpConnect(probe.tcpSocket.host ?? podIP, p, timeoutMs);
      return { ok: true, message: `TCP ${p} open` };
    }
    if (probe.exec) {
      if (probe.exec.command.length === 0) throw new Error('exec probe has an empty command');
      const code = await execCode([...enter, ...probe.exec.command], env, timeoutMs);
      return { ok: code === 0, message: `exec probe exited ${code}` };
    }
    return { ok: false, message: 'probe kind not supported by the process kubelet (httpGet, tcpSocket and exec are)' };
  } catch (err) {
    return { ok: false, message: (err as Error).message };
  }
}

function httpStatus(url: string, timeoutMs: number, tls: boolean): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = (tls ? httpsRequest : request)(
      url,
      { method: 'GET', timeout: timeoutMs, rejectUnauthorized: false },
      (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`probe ${url} timed out`)));
    req.on('error', reject);
    req.end();
  });
}

function tcpConnect(host: string, port: number, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = connect({ host, port, timeout: timeoutMs });
    s.on('connect', () => {
      s.destroy();
      resolve();
    });
    s.on('timeout', () => {
      s.destroy();
      reject(new Error(`TCP ${host}:${port} timed out`));
    });
    s.on('error', reject);
  });
}

function execCode(command: string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const [cmd, ...args] = command;
    if (!cmd) return reject(new Error('exec probe has an empty command'));
    const child = spawn(cmd, args, { env, stdio: 'ignore', timeout: timeoutMs });
    child.on('error', reject);
    child.on('exit', (code) => resolve(code ?? 1));
  });
}
