// The agentflow web UI: workflows, their DAG live, task details and logs, and
// agent pools, read with the user's own Kubernetes credentials through
// `agentflow ui` (docs/ui.md). Pages are hash routes (#/ns/<ns>/workflows/...),
// so the page works wherever it is served from.
import './style.css';
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { getJson, type KList, loadConfig } from './api.ts';
import { href, parseRoute, type Route } from './views/common.tsx';
import { Pools } from './views/pools.tsx';
import { WorkflowPage } from './views/workflow.tsx';
import { WorkflowList } from './views/workflows.tsx';

interface Config {
  namespace: string;
  context: string | undefined;
}

/** The same page in another namespace. */
function inNamespace(route: Route, ns: string): string {
  return route.page === 'pools' ? href.pools(ns) : href.workflows(ns);
}

function NamespacePicker({ route }: { route: Route }) {
  const [value, setValue] = useState(route.ns);
  const [known, setKnown] = useState<string[]>([]);
  useEffect(() => setValue(route.ns), [route.ns]);
  useEffect(() => {
    // Many users may not list namespaces: then the field is free text only.
    getJson<KList<{ metadata?: { name?: string } }>>('/api/v1/namespaces').then(
      (l) => setKnown(l.items.map((n) => n.metadata?.name ?? '').filter(Boolean)),
      () => setKnown([]),
    );
  }, []);
  return (
    <form
      class="ns-picker"
      onSubmit={(e) => {
        e.preventDefault();
        const ns = value.trim();
        if (ns && ns !== route.ns) location.hash = inNamespace(route, ns);
      }}
    >
      <label for="ns">namespace</label>
      <input
        id="ns"
        list="namespaces"
        value={value}
        data-testid="namespace"
        spellcheck={false}
        onInput={(e) => setValue(e.currentTarget.value)}
        onChange={(e) => {
          const ns = e.currentTarget.value.trim();
          if (ns && ns !== route.ns) location.hash = inNamespace(route, ns);
        }}
      />
      <datalist id="namespaces">
        {known.map((n) => (
          <option key={n} value={n} />
        ))}
      </datalist>
    </form>
  );
}

function App({ config }: { config: Config }) {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const onChange = () => setHash(location.hash);
    addEventListener('hashchange', onChange);
    return () => removeEventListener('hashchange', onChange);
  }, []);
  const route = parseRoute(hash, config.namespace);
  useEffect(() => {
    document.title =
      route.page === 'workflow'
        ? `${route.name} · agentflow`
        : route.page === 'pools'
          ? 'pools · agentflow'
          : 'agentflow';
  }, [route.page, route.page === 'workflow' ? route.name : '']);
  return (
    <>
      <header class="top">
        <a class="brand" href={href.workflows(route.ns)}>
          agentflow
        </a>
        <nav>
          <a href={href.workflows(route.ns)} class={route.page !== 'pools' ? 'active' : ''} data-testid="nav-workflows">
            Workflows
          </a>
          <a href={href.pools(route.ns)} class={route.page === 'pools' ? 'active' : ''} data-testid="nav-pools">
            Pools
          </a>
        </nav>
        <span class="spacer" />
        {config.context && (
          <span class="context" title="kubeconfig context">
            {config.context}
          </span>
        )}
        <NamespacePicker route={route} />
      </header>
      <main>
        {route.page === 'workflows' && <WorkflowList key={route.ns} ns={route.ns} />}
        {route.page === 'workflow' && (
          <WorkflowPage key={`${route.ns}/${route.name}`} ns={route.ns} name={route.name} task={route.task} />
        )}
        {route.page === 'pools' && <Pools key={route.ns} ns={route.ns} />}
      </main>
    </>
  );
}

async function start(): Promise<void> {
  const cfg = await loadConfig();
  const fromUrl = new URLSearchParams(location.search).get('namespace');
  const config: Config = { namespace: fromUrl || cfg.namespace || 'default', context: cfg.context };
  const root = document.getElementById('app');
  if (root) render(<App config={config} />, root);
}

void start();
