import { randomBytes } from 'node:crypto';
import type { CoreV1Event } from '@kubernetes/client-node';
import type { Logger } from '../../lib/log.ts';
import { EVENTS, isNotFound, type KObject, type KubeClient, resourcePath } from './client.ts';

export type EventType = 'Normal' | 'Warning';

const MAX_MESSAGE = 1024;
// Repeats of the same event within this window bump its count instead of creating another.
const AGGREGATE_MS = 10 * 60_000;
const MAX_CACHE = 4096;

/**
 * Records core/v1 Events (what `kubectl describe` and `kubectl get events`
 * show) the way client-go's recorder does: a repeat of the same
 * (object, type, reason, message) is one Event whose count and lastTimestamp
 * grow. Fire-and-forget: a failure to record is logged, never thrown.
 */
export class EventRecorder {
  private readonly client: KubeClient;
  private readonly component: string;
  private readonly host: string;
  private readonly log: Logger;
  private readonly seen = new Map<
    string,
    { name: string; namespace: string; count: number; first: string; at: number }
  >();
  private pending = new Set<Promise<void>>();

  constructor(client: KubeClient, opts: { component: string; host: string; logger: Logger }) {
    this.client = client;
    this.component = opts.component;
    this.host = opts.host;
    this.log = opts.logger;
  }

  record(obj: KObject, type: EventType, reason: string, message: string): void {
    const p = this.write(obj, type, reason, message.slice(0, MAX_MESSAGE))
      .catch((err: Error) => this.log.warn('Could not record an Event', { reason, error: err }))
      .finally(() => this.pending.delete(p));
    this.pending.add(p);
  }

  /** Waits for Events still being written (tests, shutdown). */
  async flush(): Promise<void> {
    await Promise.allSettled([...this.pending]);
  }

  private async write(obj: KObject, type: EventType, reason: string, message: string): Promise<void> {
    const meta = obj.metadata ?? {};
    const namespace = meta.namespace || 'default';
    const now = new Date();
    const key = [meta.uid ?? `${namespace}/${meta.name}`, type, reason, message].join('\n');
    const prev = this.seen.get(key);
    if (prev && Date.now() - prev.at < AGGREGATE_MS) {
      prev.count++;
      prev.at = Date.now();
      try {
        await this.client.mergePatch(resourcePath(EVENTS, { namespace: prev.namespace, name: prev.name }), {
          count: prev.count,
          lastTimestamp: now.toISOString(),
        });
        return;
      } catch (err) {
        if (!isNotFound(err)) throw err;
        this.seen.delete(key); // expired or deleted: record a new one
      }
    }
    const name = `${meta.name}.${Date.now().toString(16)}${randomBytes(2).toString('hex')}`;
    const ev: CoreV1Event = {
      apiVersion: 'v1',
      kind: 'Event',
      metadata: { name, namespace },
      involvedObject: {
        apiVersion: obj.apiVersion,
        kind: obj.kind,
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resourceVersion: meta.resourceVersion,
      },
      type,
      reason,
      message,
      count: 1,
      firstTimestamp: now,
      lastTimestamp: now,
      source: { component: this.component, host: this.host },
      reportingComponent: this.component,
      reportingInstance: this.host,
    };
    await this.client.create(resourcePath(EVENTS, { namespace }), ev);
    if (this.seen.size >= MAX_CACHE) {
      const [oldest] = this.seen.keys();
      if (oldest !== undefined) this.seen.delete(oldest);
    }
    this.seen.set(key, { name, namespace, count: 1, first: now.toISOString(), at: Date.now() });
  }
}
