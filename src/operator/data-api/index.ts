// Starts the leader's data API for one term: the HTTPS server, the
// request-header trust it reads from kube-system (re-read every minute: the
// API server's front-proxy CA can rotate), and the APIService's caBundle,
// kept equal to the CA that signs our serving certificate.

import { DATA_APISERVICE } from '../../api/data-api.ts';
import type { Logger } from '../../lib/log.ts';
import { isNotFound, type KubeClient } from '../kube/client.ts';
import { AccessReviewer } from './access.ts';
import { loadRequestHeaderConfig, type RequestHeaderConfig } from './request-header.ts';
import { DataApiServer, type DataSource } from './server.ts';

export { LeaderDataSource } from './source.ts';

const RECHECK_MS = 60_000;

export interface DataApiHandle {
  readonly port: number;
  stop(): Promise<void>;
}

export interface StartDataApiOptions {
  client: KubeClient;
  listen: string;
  source: DataSource;
  identity: () => { certPem: string; keyPem: string };
  onIdentityChange: (listener: (certPem: string, keyPem: string) => void) => void;
  caBundle: () => string;
  onCaChange: (listener: (pem: string) => void) => void;
  logger: Logger;
}

/** Makes the APIService trust our CA (a no-op when it already does). False: there is no APIService. */
export async function syncApiServiceCa(client: KubeClient, caBundle: string, log: Logger): Promise<boolean> {
  const path = `/apis/apiregistration.k8s.io/v1/apiservices/${DATA_APISERVICE}`;
  const want = Buffer.from(caBundle).toString('base64');
  try {
    const svc = await client.get<{ spec?: { caBundle?: string } }>(path);
    if (svc.spec?.caBundle === want) return true;
    await client.mergePatch(path, { spec: { caBundle: want } });
    log.info('Set the APIService caBundle to the data API CA', { apiService: DATA_APISERVICE });
    return true;
  } catch (err) {
    if (isNotFound(err)) return false;
    throw err;
  }
}

function splitListen(listen: string): { host: string; port: number } {
  const i = listen.lastIndexOf(':');
  return { host: listen.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(listen.slice(i + 1)) };
}

/** undefined: the API server publishes no request-header trust, so nothing could reach the API (logged). */
export async function startDataApi(o: StartDataApiOptions): Promise<DataApiHandle | undefined> {
  const log = o.logger.with({ component: 'data-api' });
  let trust: RequestHeaderConfig;
  try {
    trust = await loadRequestHeaderConfig(o.client);
  } catch (err) {
    log.warn('Not serving the data API: the API server cannot proxy to it', { error: err as Error });
    return undefined;
  }
  const { host, port } = splitListen(o.listen);
  const { certPem, keyPem } = o.identity();
  const server = new DataApiServer({
    host,
    port,
    certPem,
    keyPem,
    requestHeader: trust,
    access: new AccessReviewer(o.client),
    source: o.source,
    logger: log,
  });
  const bound = await server.start();
  o.onIdentityChange((cert, key) => server.setIdentity(cert, key));
  const sync = (bundle: string) =>
    syncApiServiceCa(o.client, bundle, log)
      .then((found) => {
        if (!found) log.warn('No APIService registers the data API', { apiService: DATA_APISERVICE });
      })
      .catch((err: Error) => log.warn('Could not set the APIService caBundle', { error: err }));
  await sync(o.caBundle());
  o.onCaChange((pem) => void sync(pem));
  let stopped = false;
  const timer = setInterval(() => {
    loadRequestHeaderConfig(o.client)
      .then((cfg) => {
        if (stopped || JSON.stringify(cfg) === JSON.stringify(trust)) return;
        trust = cfg;
        server.setRequestHeader(cfg);
        log.info('The API server request-header configuration changed: trusting the new one');
      })
      .catch((err: Error) => log.warn('Could not re-read the request-header configuration', { error: err }));
    void sync(o.caBundle());
  }, RECHECK_MS);
  timer.unref();
  log.info('Serving the data API', { port: bound, apiService: DATA_APISERVICE });
  return {
    port: bound,
    stop: async () => {
      stopped = true;
      clearInterval(timer);
      await server.stop();
    },
  };
}
