// agents: the agents connected to a pool (the data API's `agents`), or to every pool of the namespace.
import type { AgentList, AgentView } from '../../../api/data-api.ts';
import { KubeApiError } from '../../../operator/kube/client.ts';
import { type DataFormat, formatData, table } from '../format.ts';
import type { Io } from '../io.ts';
import type { Cluster } from '../kube.ts';

export const AGENT_COLUMNS = ['NAME', 'POOL', 'NODE', 'SLOTS', 'IN-FLIGHT', 'FREE', 'DRAINING', 'HANDLERS'] as const;
/** Handlers listed in a row unless -o wide asks for all of them. */
const HANDLERS_SHOWN = 4;

export function agentRow(pool: string, a: AgentView, wide: boolean): string[] {
  const handlers =
    wide || a.handlers.length <= HANDLERS_SHOWN
      ? a.handlers.join(',')
      : `${a.handlers.slice(0, HANDLERS_SHOWN).join(',')},… (${a.handlers.length - HANDLERS_SHOWN} more)`;
  return [
    a.name,
    pool,
    a.node ?? '',
    String(a.capacity),
    String(a.inFlight),
    String(a.free),
    a.draining ? 'true' : 'false',
    handlers,
  ];
}

export async function agents(cluster: Cluster, io: Io, pool: string | undefined, o: { output?: DataFormat | 'wide' }) {
  let lists: AgentList[];
  if (pool !== undefined) lists = [await cluster.agents(pool)];
  else {
    const pools = await cluster.listPools();
    const found = await Promise.all(
      pools.items.map(async (p) => {
        try {
          return await cluster.agents(p.metadata?.name ?? '');
        } catch (err) {
          // A pool the operator has not taken up yet: no agents to show.
          if (err instanceof KubeApiError && err.status === 404) return undefined;
          throw err;
        }
      }),
    );
    lists = found.filter((l): l is AgentList => l !== undefined);
  }
  if (o.output === 'json' || o.output === 'yaml') {
    io.out(formatData(pool !== undefined ? lists[0] : { apiVersion: 'v1', kind: 'List', items: lists }, o.output));
    return 0;
  }
  const rows = lists.flatMap((l) => l.items.map((a) => agentRow(l.metadata.pool, a, o.output === 'wide')));
  if (rows.length === 0) {
    io.err(
      pool !== undefined
        ? `No agents connected to pool ${pool} in ${cluster.namespace} namespace.\n`
        : `No agents found in ${cluster.namespace} namespace.\n`,
    );
    return 0;
  }
  io.out(table(AGENT_COLUMNS, rows));
  return 0;
}
