// The AgentPools of a namespace (watched) and each pool's connected agents with
// their slots, work in flight and draining (the data API, read every 2 s).
import { useEffect, useState } from 'preact/hooks';
import { type AgentList, type AgentPool, ApiError, agentsOf, listWatch, poolsPath, sleep } from '../api.ts';
import { ErrorBox } from './common.tsx';

const AGENTS_POLL_MS = 2000;

function PoolCard({ ns, pool }: { ns: string; pool: AgentPool }) {
  const name = pool.metadata.name ?? '';
  const [agents, setAgents] = useState<AgentList | undefined>(undefined);
  const [error, setError] = useState<ApiError | undefined>(undefined);
  useEffect(() => {
    const ac = new AbortController();
    void (async () => {
      while (!ac.signal.aborted) {
        try {
          setAgents(await agentsOf(ns, name, ac.signal));
          setError(undefined);
        } catch (err) {
          if (ac.signal.aborted) return;
          setError(err instanceof ApiError ? err : new ApiError(0, 'Error', (err as Error).message, ''));
        }
        await sleep(AGENTS_POLL_MS, ac.signal);
      }
    })();
    return () => ac.abort();
  }, [ns, name]);
  const st = pool.status ?? {};
  // The agents' own numbers are fresher than the pool's status.
  const inUse = agents ? agents.items.reduce((n, a) => n + a.inFlight, 0) : (st.inflight ?? 0);
  const slots = agents ? agents.items.reduce((n, a) => n + a.capacity, 0) : (st.capacity ?? 0);
  return (
    <div class="card" data-testid="pool" data-pool={name}>
      <h2>{name}</h2>
      <p class="facts-line">
        <span>
          pods <b>{st.readyReplicas ?? 0}</b>/{st.replicas ?? 0} ready
        </span>
        <span>
          agents <b data-testid="pool-connected">{st.connectedAgents ?? 0}</b> connected
        </span>
        <span>
          slots <b data-testid="pool-in-use">{inUse}</b>/{slots} in use
        </span>
        <span>
          queued <b>{st.queued ?? 0}</b>
        </span>
      </p>
      {error && <ErrorBox error={error} what={{ verb: 'read', resource: 'agentpools', namespace: ns }} />}
      {agents && agents.items.length === 0 && <p class="muted">No agent is connected.</p>}
      {agents && agents.items.length > 0 && (
        <table class="table compact" data-testid="agents">
          <thead>
            <tr>
              <th>Agent</th>
              <th>Node</th>
              <th>Slots</th>
              <th>In flight</th>
              <th>Free</th>
              <th>Draining</th>
              <th>Handlers</th>
            </tr>
          </thead>
          <tbody>
            {agents.items.map((a) => (
              <tr
                key={a.name}
                data-testid="agent-row"
                data-agent={a.name}
                data-draining={String(a.draining)}
                data-inflight={String(a.inFlight)}
              >
                <td>{a.name}</td>
                <td>{a.node ?? '–'}</td>
                <td>{a.capacity}</td>
                <td>{a.inFlight}</td>
                <td>{a.free}</td>
                <td>{a.draining ? <span class="badge phase-Retrying">draining</span> : 'no'}</td>
                <td class="message">{a.handlers.join(', ')}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}

export function Pools({ ns }: { ns: string }) {
  const [pools, setPools] = useState<Map<string, AgentPool> | undefined>(undefined);
  const [error, setError] = useState<ApiError | undefined>(undefined);
  useEffect(() => {
    setPools(undefined);
    setError(undefined);
    const ac = new AbortController();
    void listWatch<AgentPool>(poolsPath(ns), {}, setPools, setError, ac.signal);
    return () => ac.abort();
  }, [ns]);
  const list = [...(pools?.values() ?? [])].sort((a, b) =>
    (a.metadata.name ?? '').localeCompare(b.metadata.name ?? ''),
  );
  return (
    <section class="page">
      <h1>
        Agent pools <span class="muted">in {ns}</span>
      </h1>
      {error && <ErrorBox error={error} what={{ verb: 'read', resource: 'agentpools', namespace: ns }} />}
      {!pools && !error && <p class="muted">Loading…</p>}
      {pools && list.length === 0 && <p class="muted">No agent pools in namespace {ns}.</p>}
      {list.map((p) => (
        <PoolCard key={p.metadata.name} ns={ns} pool={p} />
      ))}
    </section>
  );
}
