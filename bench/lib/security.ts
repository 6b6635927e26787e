// The two security postures an agentflow system runs with in the benchmark:
//   'tls+auth'  what users get: TLS on the dispatcher's gRPC port (a CA and a
//               serving certificate for 127.0.0.1 made by the operator's own
//               src/operator/tls/certs.ts) and every stream's bearer token
//               verified (StaticAgentAuth, see static-auth.ts);
//   'plaintext' insecure credentials and OpenAgentAuth: the posture before
//               issue 12, measured only as the baseline for the cost of security.
// Agents get what a pod gets: a token file and a CA file (or, for the baseline,
// insecurePlaintext and any token).
import { randomBytes, randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ServerCredentials } from '@grpc/grpc-js';
import type { AgentAuth, AgentIdentity } from '../../src/dispatcher/auth.ts';
import { createCa, issueServingCert, parseSans } from '../../src/operator/tls/certs.ts';
import { OpenAgentAuth, type PoolGrant, StaticAgentAuth } from './static-auth.ts';

export type SecurityPosture = 'tls+auth' | 'plaintext';

export const SECURITY_NOTES: Record<SecurityPosture, string> = {
  'tls+auth':
    'TLS on the dispatcher stream (TLS 1.3, AES-256-GCM as negotiated here; an ECDSA P-256 serving certificate for ' +
    '127.0.0.1 and localhost issued by a CA from src/operator/tls/certs.ts; agents dial 127.0.0.1, verify the name ' +
    'localhost against the CA file) + a bearer token on every stream, checked by StaticAgentAuth: a fixed ' +
    'token -> identity map standing in for KubeAgentAuth after its first TokenReview (a cache hit), with the same ' +
    'pool checks on Register. Not measured: the first TokenReview round trip per token (once per token, not per task)',
  plaintext:
    'baseline only, the pre-issue-12 posture: ServerCredentials.createInsecure() and an auth that accepts any stream ' +
    'and grants its Register as sent; agents use insecurePlaintext',
};

/** What an agent process needs to connect: file paths, so it reads them as a pod does. JSON-safe. */
export interface AgentCredentials {
  tokenFile: string;
  /** Absent: plaintext. */
  caFile?: string;
  /**
   * The name the dispatcher's certificate is checked for. Agents dial 127.0.0.1, but a DNS name here, as in a
   * cluster (the dispatcher Service's name): grpc-js would otherwise send the IP as TLS SNI, which Node warns of.
   */
  serverName?: string;
}

export interface BenchSecurity {
  posture: SecurityPosture;
  credentials: ServerCredentials;
  auth: AgentAuth;
  /** Issues a token for one agent process (its own identity) and writes it, and the CA, into `dir`. */
  agentCredentials(name: string, o?: { podBound?: boolean }): AgentCredentials;
}

/** The serving certificate carries this name and 127.0.0.1. */
const SERVER_NAME = 'localhost';

/** One hour, as a projected ServiceAccount token's default lifetime: no run comes near it. */
const TOKEN_LIFETIME_MS = 3_600_000;

export async function benchSecurity(posture: SecurityPosture, dir: string, grant: PoolGrant): Promise<BenchSecurity> {
  if (posture === 'plaintext') {
    return {
      posture,
      credentials: ServerCredentials.createInsecure(),
      auth: new OpenAgentAuth(),
      agentCredentials(name) {
        // The agent runtime always sends a token; without auth any string does.
        const tokenFile = join(dir, `${name}.token`);
        writeFileSync(tokenFile, 'anything');
        return { tokenFile };
      },
    };
  }
  const ca = await createCa({ validitySeconds: 86_400 });
  const serving = await issueServingCert(ca, { sans: parseSans(['127.0.0.1', SERVER_NAME]), validitySeconds: 86_400 });
  const caFile = join(dir, 'ca.crt');
  writeFileSync(caFile, ca.certPem);
  const auth = new StaticAgentAuth();
  return {
    posture,
    credentials: ServerCredentials.createSsl(
      null,
      [{ cert_chain: Buffer.from(serving.certPem), private_key: Buffer.from(serving.keyPem) }],
      false,
    ),
    auth,
    agentCredentials(name, o = {}) {
      const token = randomBytes(32).toString('base64url');
      const expiresAt = Date.now() + TOKEN_LIFETIME_MS;
      // A process with one agent is like an agent pod (pod-bound token: the agent is named after the pod); one
      // hosting many agents (the scale scenario) is like an external agent's ServiceAccount, agents named sa.suffix.
      const identity: AgentIdentity = o.podBound
        ? {
            username: `system:serviceaccount:${grant.namespace}:${grant.pool}-agents`,
            groups: ['system:serviceaccounts', `system:serviceaccounts:${grant.namespace}`],
            serviceAccountNamespace: grant.namespace,
            pod: { namespace: grant.namespace, name, uid: randomUUID() },
            expiresAt,
          }
        : {
            username: `system:serviceaccount:${grant.namespace}:${name}`,
            groups: ['system:serviceaccounts', `system:serviceaccounts:${grant.namespace}`],
            serviceAccountNamespace: grant.namespace,
            expiresAt,
          };
      auth.add(token, identity, grant);
      const tokenFile = join(dir, `${name}.token`);
      writeFileSync(tokenFile, token);
      return { tokenFile, caFile, serverName: SERVER_NAME };
    },
  };
}
