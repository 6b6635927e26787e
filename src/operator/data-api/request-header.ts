// Who is asking: the kube-apiserver authenticates the user and proxies the
// request to us over TLS with its front-proxy client certificate, naming the
// user in request headers (--requestheader-* flags). Those headers are
// believed only on a connection whose client certificate chains to the
// request-header CA and carries one of the allowed names — what every
// aggregated API server does (k8s.io/apiserver's requestheader authenticator).
// The API server publishes that configuration in the ConfigMap
// kube-system/extension-apiserver-authentication.

import { X509Certificate } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { TLSSocket } from 'node:tls';
import type { KubeClient } from '../kube/client.ts';

export const AUTH_CONFIGMAP = { namespace: 'kube-system', name: 'extension-apiserver-authentication' } as const;

export interface RequestHeaderConfig {
  /** PEM bundle the front proxy's client certificate must chain to. */
  clientCa: string;
  /** Common names the front proxy's certificate may carry; empty: any the CA signed. */
  allowedNames: string[];
  usernameHeaders: string[];
  uidHeaders: string[];
  groupHeaders: string[];
  extraHeaderPrefixes: string[];
}

export interface UserInfo {
  username: string;
  uid?: string;
  groups: string[];
  extra: Record<string, string[]>;
}

/** Why a request is not authenticated (answered 401). */
export class AuthenticationError extends Error {
  override readonly name = 'AuthenticationError';
}

/** The API server has not published request-header authentication: the API cannot tell who asks. */
export class RequestHeaderConfigError extends Error {
  override readonly name = 'RequestHeaderConfigError';
}

function jsonList(data: Record<string, string>, key: string, fallback: string[]): string[] {
  const raw = data[key];
  if (raw === undefined || raw === '') return fallback;
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    throw new RequestHeaderConfigError(`${AUTH_CONFIGMAP.name} key ${key}: not a JSON list: ${raw.slice(0, 80)}`);
  }
  if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) {
    throw new RequestHeaderConfigError(`${AUTH_CONFIGMAP.name} key ${key}: not a list of strings`);
  }
  return v;
}

/** Parses the ConfigMap's data (pure, for tests). */
export function parseRequestHeaderConfig(data: Record<string, string>): RequestHeaderConfig {
  const clientCa = data['requestheader-client-ca-file'];
  if (!clientCa) {
    throw new RequestHeaderConfigError(
      `ConfigMap ${AUTH_CONFIGMAP.namespace}/${AUTH_CONFIGMAP.name} has no requestheader-client-ca-file: ` +
        'start kube-apiserver with --requestheader-client-ca-file (and --proxy-client-cert-file) to serve aggregated APIs',
    );
  }
  try {
    new X509Certificate(clientCa);
  } catch (err) {
    throw new RequestHeaderConfigError(
      `requestheader-client-ca-file is not a PEM certificate: ${(err as Error).message}`,
    );
  }
  const usernameHeaders = jsonList(data, 'requestheader-username-headers', []);
  if (usernameHeaders.length === 0) {
    throw new RequestHeaderConfigError('requestheader-username-headers is empty: the API server names no user header');
  }
  return {
    clientCa,
    allowedNames: jsonList(data, 'requestheader-allowed-names', []),
    usernameHeaders,
    uidHeaders: jsonList(data, 'requestheader-uid-headers', []),
    groupHeaders: jsonList(data, 'requestheader-group-headers', []),
    extraHeaderPrefixes: jsonList(data, 'requestheader-extra-headers-prefix', []),
  };
}

export async function loadRequestHeaderConfig(client: KubeClient): Promise<RequestHeaderConfig> {
  const cm = await client.get<{ data?: Record<string, string> }>(
    `/api/v1/namespaces/${AUTH_CONFIGMAP.namespace}/configmaps/${AUTH_CONFIGMAP.name}`,
  );
  return parseRequestHeaderConfig(cm.data ?? {});
}

const values = (req: IncomingMessage, header: string): string[] => {
  const v = req.headers[header.toLowerCase()];
  if (v === undefined) return [];
  return (Array.isArray(v) ? v : [v])
    .flatMap((s) => s.split(','))
    .map((s) => s.trim())
    .filter(Boolean);
};

/**
 * The user a proxied request names. Throws AuthenticationError unless the
 * connection's client certificate was verified against the request-header CA
 * (the server's `ca`) and is one of the allowed names.
 */
export function authenticate(req: IncomingMessage, cfg: RequestHeaderConfig): UserInfo {
  const socket = req.socket as TLSSocket;
  if (typeof socket.getPeerCertificate !== 'function') throw new AuthenticationError('not a TLS connection');
  if (!socket.authorized) {
    throw new AuthenticationError(
      `no client certificate from the API server's front proxy (${socket.authorizationError ?? 'none presented'}): ` +
        'this API is reached through the Kubernetes API server, e.g. kubectl get --raw /apis/data.agentflow.io/v1alpha1/...',
    );
  }
  const cn = socket.getPeerCertificate().subject?.CN;
  const name = Array.isArray(cn) ? cn[0] : cn;
  if (cfg.allowedNames.length > 0 && !cfg.allowedNames.includes(name ?? '')) {
    throw new AuthenticationError(`client certificate CN "${name ?? ''}" is not an allowed front-proxy name`);
  }
  const username = cfg.usernameHeaders.map((h) => values(req, h)[0]).find(Boolean);
  if (!username) throw new AuthenticationError('the front proxy named no user');
  const uid = cfg.uidHeaders.map((h) => values(req, h)[0]).find(Boolean);
  const groups = cfg.groupHeaders.flatMap((h) => values(req, h));
  const extra: Record<string, string[]> = {};
  for (const [header, raw] of Object.entries(req.headers)) {
    const prefix = cfg.extraHeaderPrefixes.find((p) => header.startsWith(p.toLowerCase()));
    if (!prefix || raw === undefined) continue;
    // Extra keys are percent-encoded in header names (k8s.io/apiserver unescapes them too).
    const key = decodeURIComponent(header.slice(prefix.length));
    extra[key] = [...(extra[key] ?? []), ...(Array.isArray(raw) ? raw : [raw])];
  }
  return { username, ...(uid && { uid }), groups, extra };
}
