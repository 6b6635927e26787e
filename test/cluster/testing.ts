import { randomBytes } from 'node:crypto';
import { inject } from 'vitest';
import { ClusterHandle } from './cluster-handle.ts';

/** The control plane the project's global setup started. */
export function testCluster(): ClusterHandle {
  return new ClusterHandle(inject('cluster'));
}

/** A DNS-1123 name unique to this run, for namespaces and nodes. */
export function uniqueName(prefix: string): string {
  return `${prefix}-${randomBytes(3).toString('hex')}`;
}
