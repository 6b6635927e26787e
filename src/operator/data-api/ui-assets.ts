// The web UI's static files (ui/dist, built by `npm run build:ui`), served by
// the data API under the cluster-scoped path /apis/data.agentflow.io/v1alpha1/ui/,
// so the browser reaches them through the Kubernetes API server (via
// `agentflow ui`'s local proxy, or `kubectl proxy`) with the same
// authentication as the data they show. Read once at start into memory (a few
// hundred KiB); the bundle's file names carry a content hash, so everything but
// index.html is cached for good.

import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { extname, join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DATA_GROUP, DATA_VERSION } from '../../api/data-api.ts';

/** Where the UI is served, relative to the API server. */
export const UI_PATH = `/apis/${DATA_GROUP}/${DATA_VERSION}/ui`;
/** The resource the API server authorises (`get` on `ui` of data.agentflow.io) before it proxies here. */
export const UI_RESOURCE = 'ui';

/**
 * The built UI: ui/dist at the repository (or image) root. This file is
 * src/operator/data-api/ui-assets.ts from source, dist/operator/data-api/ui-assets.js
 * when built: three levels below the root either way.
 */
export const UI_DIST = fileURLToPath(new URL('../../../ui/dist/', import.meta.url));

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
};

/** The page may load only its own scripts and styles and talk only to its own origin (the proxy). */
const SECURITY_HEADERS = {
  'Content-Security-Policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'X-Frame-Options': 'DENY',
} as const;

/** A bundle file whose name carries a content hash (`app-3JX7Q2ZK.js`): never changes. */
const HASHED = /-[A-Z0-9]{8}\.[a-z0-9.]+$/;

interface Asset {
  body: Buffer;
  type: string;
  etag: string;
  cacheControl: string;
}

export type UiAnswer = { status: number; headers: Record<string, string | number>; body: Buffer | string };

export class UiAssets {
  private readonly files: Map<string, Asset>;
  /** Why there is nothing to serve (ui/dist missing or empty), else undefined. */
  readonly missing: string | undefined;
  readonly dir: string;

  constructor(dir: string = UI_DIST) {
    this.dir = dir;
    this.files = new Map();
    if (!existsSync(join(dir, 'index.html'))) {
      this.missing = `UI not built: run npm run build:ui (no ${join(dir, 'index.html')})`;
      return;
    }
    this.missing = undefined;
    for (const file of walk(dir)) {
      const rel = relative(dir, file).split(sep).join('/');
      const body = readFileSync(file);
      this.files.set(rel, {
        body,
        type: TYPES[extname(file)] ?? 'application/octet-stream',
        etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"`,
        cacheControl: HASHED.test(rel) ? 'public, max-age=31536000, immutable' : 'no-cache',
      });
    }
  }

  /** The answer for `path` (the request path, starting with UI_PATH). */
  answer(path: string, ifNoneMatch: string | undefined): UiAnswer {
    if (path === UI_PATH) {
      // Relative asset URLs need the trailing slash.
      return { status: 301, headers: { Location: `${UI_PATH}/`, 'Content-Length': 0 }, body: '' };
    }
    if (this.missing) {
      return text(503, this.missing);
    }
    let rel: string;
    try {
      rel = decodeURIComponent(path.slice(UI_PATH.length + 1));
    } catch {
      return text(400, `malformed path: ${path}`);
    }
    // Anything that is not a file of the bundle (a client-side route) gets the page.
    const asset = this.files.get(rel) ?? (extname(rel) === '' ? this.files.get('index.html') : undefined);
    if (!asset) return text(404, `the UI has no file ${rel}`);
    const headers = { 'Content-Type': asset.type, 'Cache-Control': asset.cacheControl, ETag: asset.etag };
    if (ifNoneMatch?.split(/\s*,\s*/).includes(asset.etag)) {
      return { status: 304, headers: { ...headers, ...SECURITY_HEADERS }, body: '' };
    }
    return {
      status: 200,
      headers: { ...headers, ...SECURITY_HEADERS, 'Content-Length': asset.body.length },
      body: asset.body,
    };
  }

  /** Writes the answer for the request (the caller has checked it is a GET of a path under UI_PATH). */
  serve(req: IncomingMessage, res: ServerResponse, path: string): void {
    const a = this.answer(path, req.headers['if-none-match']);
    res.writeHead(a.status, a.headers);
    res.end(a.body);
  }
}

function text(status: number, message: string): UiAnswer {
  return {
    status,
    headers: {
      'Content-Type': 'text/plain; charset=utf-8',
      'Cache-Control': 'no-store',
      'X-Content-Type-Options': 'nosniff',
      'Content-Length': Buffer.byteLength(message),
    },
    body: message,
  };
}

function* walk(dir: string): Generator<string> {
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) yield* walk(p);
    else yield p;
  }
}
