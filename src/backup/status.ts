import type { Logger } from '../lib/log.ts';
import { Gauge, type Registry } from '../lib/metrics.ts';
import type { StateStore } from '../state/index.ts';
import { FAILURE_KEY, LATEST_KEY, type SnapshotInfo } from './snapshot.ts';

/** How often the operator re-reads what the last snapshot recorded in etcd. */
export const BACKUP_STATUS_REFRESH_MS = 30_000;

/**
 * What the snapshots (`agentflow backup snapshot`, the chart's CronJob) last
 * recorded in etcd, as Prometheus gauges on every operator replica: alert on
 * `time() - agentflow_backup_last_success_timestamp_seconds` growing past the
 * schedule, or on a failure newer than the last success.
 */
export class BackupStatus {
  private readonly store: StateStore;
  private readonly log: Logger;
  private latest: SnapshotInfo | undefined;
  private failure: { at: string; message: string } | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(store: StateStore, registry: Registry, log: Logger) {
    this.store = store;
    this.log = log;
    const seconds = (iso: string | undefined) => (iso ? Date.parse(iso) / 1000 : 0);
    const gauge = (name: string, help: string, read: () => number) =>
      new Gauge({
        name,
        help,
        registers: [registry],
        collect() {
          this.set(read());
        },
      });
    gauge(
      'agentflow_backup_last_success_timestamp_seconds',
      'When the latest etcd snapshot was taken (0: none recorded).',
      () => seconds(this.latest?.takenAt),
    );
    gauge('agentflow_backup_last_revision', 'etcd revision of the latest snapshot.', () => this.latest?.revision ?? 0);
    gauge('agentflow_backup_last_size_bytes', 'Size of the latest snapshot.', () => this.latest?.size ?? 0);
    gauge('agentflow_backup_last_failure_timestamp_seconds', 'When a snapshot last failed (0: none recorded).', () =>
      seconds(this.failure?.at),
    );
  }

  start(): void {
    const tick = () => {
      this.refresh().catch((err: Error) => this.log.debug('Could not read the backup records', { error: err }));
    };
    tick();
    this.timer = setInterval(tick, BACKUP_STATUS_REFRESH_MS);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  async refresh(): Promise<void> {
    const [latest, failure] = await Promise.all([
      this.store.get(this.store.key(...LATEST_KEY)),
      this.store.get(this.store.key(...FAILURE_KEY)),
    ]);
    this.latest = latest ? (JSON.parse(latest.value) as SnapshotInfo) : undefined;
    this.failure = failure ? (JSON.parse(failure.value) as { at: string; message: string }) : undefined;
  }
}
