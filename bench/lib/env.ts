import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { arch, cpus, platform, release, totalmem } from 'node:os';
import { join } from 'node:path';
import { binaryPath, repoRoot } from '../../test/cluster/binaries.ts';

export interface Machine {
  os: string;
  cpuModel: string;
  cpuCount: number;
  totalMemGiB: number;
  node: string;
  versions: Record<string, string>;
}

const packageVersion = (name: string): string =>
  (JSON.parse(readFileSync(join(repoRoot, 'node_modules', name, 'package.json'), 'utf8')) as { version: string })
    .version;

function firstLine(command: string, args: string[]): string {
  try {
    return execFileSync(command, args, { encoding: 'utf8' }).split('\n')[0]?.trim() ?? '';
  } catch {
    return 'unknown';
  }
}

let cached: Machine | undefined;

/** What the figures were measured on: they mean little without it. */
export function machine(): Machine {
  cached ??= {
    os: `${platform()} ${release()} ${arch()}`,
    cpuModel: cpus()[0]?.model ?? 'unknown',
    cpuCount: cpus().length,
    totalMemGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    versions: {
      etcd: firstLine(binaryPath('etcd'), ['--version']).replace(/^etcd Version:\s*/, ''),
      redis: firstLine('redis-server', ['--version']).replace(/^Redis server v=(\S+).*/, '$1'),
      bullmq: packageVersion('bullmq'),
      ioredis: packageVersion('ioredis'),
      'grpc-js': packageVersion('@grpc/grpc-js'),
      etcd3: packageVersion('etcd3'),
    },
  };
  return cached;
}
