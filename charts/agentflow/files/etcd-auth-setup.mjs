// Turns on auth in the chart's bundled etcd, once: the users root and
// agentflow-operator (no passwords: with --client-cert-auth etcd takes the
// user from the client certificate's CN), the role agentflow-operator with
// readwrite on the key prefix agentflow uses, and `auth enable`.
//
// Run by the post-install/post-upgrade Job in the agentflow image, with Node's
// built-ins only. It speaks etcd's JSON gateway (/v3/...) because the etcd
// image is distroless: no shell to make etcdctl steps conditional. The gateway
// ignores the client certificate's CN, so every step is possible only while
// auth is still off; once it is on, there is nothing left to do.
// A step whose object exists already (a run interrupted earlier) is skipped.
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import { setTimeout as sleep } from 'node:timers/promises';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const endpoint = new URL(env('ETCD_ENDPOINT'));
const tlsDir = env('ETCD_TLS_DIR');
const user = env('ETCD_OPERATOR_USER');
const prefix = env('ETCD_KEY_PREFIX');
const waitSeconds = Number(process.env.ETCD_WAIT_SECONDS ?? '300');
const tls = {
  ca: readFileSync(`${tlsDir}/ca.crt`),
  cert: readFileSync(`${tlsDir}/tls.crt`),
  key: readFileSync(`${tlsDir}/tls.key`),
};

class EtcdError extends Error {
  constructor(path, status, body) {
    super(`POST ${path}: HTTP ${status}: ${body.message ?? body.error ?? JSON.stringify(body)}`);
    this.status = status;
    this.body = body;
  }
}

function call(path, body = {}) {
  return new Promise((resolve, reject) => {
    const data = Buffer.from(JSON.stringify(body));
    const req = request(
      {
        host: endpoint.hostname,
        port: endpoint.port || 2379,
        path,
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': data.length },
        timeout: 10_000,
        ...tls,
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json;
          try {
            json = text ? JSON.parse(text) : {};
          } catch {
            json = { message: text };
          }
          if (res.statusCode === 200) resolve(json);
          else reject(new EtcdError(path, res.statusCode, json));
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`POST ${path}: no answer within 10s`)));
    req.on('error', reject);
    req.end(data);
  });
}

const b64 = (s) => Buffer.from(s, 'utf8').toString('base64');
/** The smallest key after every key with this prefix (etcd's range_end for a prefix). */
function prefixEnd(p) {
  const b = Buffer.from(p, 'utf8');
  b[b.length - 1] += 1;
  return b.toString('base64');
}

const log = (msg) => process.stdout.write(`${new Date().toISOString()} ${msg}\n`);

async function step(what, path, body) {
  try {
    await call(path, body);
    log(`${what}: done`);
  } catch (err) {
    if (err instanceof EtcdError && /already exists/.test(err.message)) {
      log(`${what}: already there`);
      return;
    }
    throw err;
  }
}

/**
 * Whether auth is on, waiting for etcd to answer. With auth on, the gateway
 * refuses any request that comes with a client certificate (it would not use
 * its CN), which is itself the answer.
 */
async function authEnabled() {
  const deadline = Date.now() + waitSeconds * 1000;
  for (;;) {
    try {
      return (await call('/v3/auth/status')).enabled === true;
    } catch (err) {
      if (err instanceof EtcdError && /CommonName .*gateway/i.test(err.message)) return true;
      if (Date.now() > deadline)
        throw new Error(`etcd at ${endpoint.origin} did not answer in ${waitSeconds}s: ${err.message}`);
      log(`Waiting for etcd at ${endpoint.origin}: ${err.message}`);
      await sleep(2000);
    }
  }
}

if (await authEnabled()) {
  log('etcd auth is enabled already; nothing to do');
} else {
  await step('user root', '/v3/auth/user/add', { name: 'root', options: { no_password: true } });
  await step('root has the role root', '/v3/auth/user/grant', { user: 'root', role: 'root' });
  await step(`role ${user}`, '/v3/auth/role/add', { name: user });
  await step(`role ${user}: readwrite on ${prefix}`, '/v3/auth/role/grant', {
    name: user,
    perm: { permType: 'READWRITE', key: b64(prefix), range_end: prefixEnd(prefix) },
  });
  await step(`user ${user}`, '/v3/auth/user/add', { name: user, options: { no_password: true } });
  await step(`user ${user} has the role ${user}`, '/v3/auth/user/grant', { user, role: user });
  await step('auth enable', '/v3/auth/enable', {});
  log('etcd auth is enabled');
}
