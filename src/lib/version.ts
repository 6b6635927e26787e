// The one place agentflow's version is read: package.json's "version", so a release bumps one file.
// Read at run time rather than imported as JSON: tsconfig.build.json's rootDir is src, and the image
// ships package.json next to dist (src/lib and dist/lib both sit two levels below the package root).
import { readFileSync } from 'node:fs';

const PACKAGE_JSON = new URL('../../package.json', import.meta.url);

function readVersion(): string {
  const pkg: unknown = JSON.parse(readFileSync(PACKAGE_JSON, 'utf8'));
  const version = typeof pkg === 'object' && pkg !== null ? (pkg as { version?: unknown }).version : undefined;
  if (typeof version !== 'string' || version === '') {
    throw new Error(`${PACKAGE_JSON.pathname}: "version" must be a non-empty string`);
  }
  return version;
}

/** agentflow's version, e.g. "0.1.0". */
export const VERSION: string = readVersion();

/** What every command's --version prints. */
export const VERSION_LINE = `agentflow ${VERSION}\n`;
