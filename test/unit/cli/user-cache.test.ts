import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { MemoItem } from '../../../src/api/data-api.ts';
import { CACHE_COLUMNS, cacheRows, formatBytes, shownKey } from '../../../src/cli/user/commands/cache.ts';
import { main } from '../../../src/cli/user/program.ts';
import { capture } from './capture.ts';
import { FakeCluster } from './fake-cluster.ts';

// `agentflow cache list|clear`: what its flags refuse before anything is sent, how the table shows
// keys, ages and sizes, and the requests and output against the stand-in API server (fake-cluster.ts).

const dir = mkdtempSync(join(tmpdir(), 'agentflow-cli-cache-'));
const fake = new FakeCluster();
let kubeconfig = '';
beforeAll(async () => {
  kubeconfig = await fake.start(dir);
});
afterAll(async () => {
  await fake.stop();
  rmSync(dir, { recursive: true, force: true });
});

const NS = 'team-a'; // the kubeconfig context's namespace
const NOW = Date.parse('2025-03-01T12:00:00Z');
const LONG_KEY = `summarize:${'x'.repeat(80)}`;

const item = (key: string, more: Partial<MemoItem> = {}): MemoItem => ({
  key,
  workflow: 'report',
  task: 'summarize',
  attempt: 1,
  createdAt: new Date(NOW - 90_000).toISOString(),
  bytes: 300,
  ...more,
});

beforeEach(() => {
  fake.state.memo.clear();
  fake.state.forbidden.clear();
  fake.requests.length = 0;
  fake.state.memo.set(NS, [
    // Whole hours and days ago: the age printed stays the same for the test's few seconds.
    item('summary-a', { attempt: 2, createdAt: new Date(Date.now() - 3 * 3_600_000).toISOString(), bytes: 812 }),
    item(LONG_KEY, {
      workflow: 'nightly',
      task: 'digest',
      createdAt: new Date(Date.now() - 3 * 86_400_000).toISOString(),
      bytes: 3 * 1024 * 1024,
    }),
  ]);
});

async function run(argv: string[], config = kubeconfig) {
  const io = capture();
  const code = await main([...argv, '--kubeconfig', config], io);
  return { code, stdout: io.stdout, stderr: io.stderr };
}

const sent = () => fake.requests.map((r) => `${r.method} ${r.path}${r.query.size ? `?${r.query}` : ''}`);

describe('cache: the command line', () => {
  it.each([
    [['cache', 'clear'], /cache clear needs --key KEY \(one entry\) or --all/],
    [['cache', 'clear', '--key', 'k', '--all'], /--key and --all: give one of them/],
    [['cache', 'clear', '--key', ''], /--key: must not be empty/],
    [['cache', 'clear', '--key'], /option '--key <key>' argument missing/],
    [['cache', 'list', '-o', 'wide'], /argument 'wide' is invalid\. Allowed choices are table, json, yaml/],
    [['cache', 'list', 'extra'], /too many arguments for 'list'/],
  ])('%j exits 2 naming the flag, sending nothing', async (argv, message) => {
    const r = await run(argv);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stdout).toBe('');
    expect(fake.requests).toEqual([]);
  });

  it('is in --help, and its own help names both subcommands and the RBAC they take', async () => {
    expect((await run(['--help'])).stdout).toMatch(/^ {2}cache\b.*memoized task outputs/m);
    const help = await run(['cache', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^ {2}list\b/m);
    expect(help.stdout).toMatch(/^ {2}clear\b/m);
    expect(help.stdout.replace(/\s+/g, ' ')).toContain('Listing takes list on workflows, clearing delete on workflows');
  });
});

describe('cache: the table', () => {
  it('cuts a long key to 48 characters ending in …, on one line; a short one stays whole', () => {
    expect(shownKey('summary-a')).toBe('summary-a');
    const cut = shownKey(LONG_KEY);
    expect(Array.from(cut)).toHaveLength(48);
    expect(cut).toBe(`${LONG_KEY.slice(0, 47)}…`);
    expect(shownKey('x'.repeat(48))).toBe('x'.repeat(48));
    expect(shownKey('line one\nline two')).toBe('line one line two');
    // Cut by code point: an emoji at the cut is kept or left out whole, never halved.
    expect(shownKey(`${'a'.repeat(46)}😀😀😀`)).toBe(`${'a'.repeat(46)}😀…`);
  });

  it('shows WORKFLOW TASK ATTEMPT, the age as kubectl prints it, and the size in B, KiB or MiB', () => {
    const rows = cacheRows(
      [
        item('k1', { attempt: 3, createdAt: new Date(NOW - 42_000).toISOString(), bytes: 812 }),
        item('k2', { createdAt: new Date(NOW - 3 * 3_600_000).toISOString(), bytes: 4096 }),
        item('k3', { createdAt: new Date(NOW - 3 * 86_400_000).toISOString(), bytes: 1.5 * 1024 * 1024 }),
      ],
      NOW,
    );
    expect(rows).toEqual([
      ['k1', 'report', 'summarize', '3', '42s', '812B'],
      ['k2', 'report', 'summarize', '1', '3h', '4.0KiB'],
      ['k3', 'report', 'summarize', '1', '3d', '1.5MiB'],
    ]);
    expect(formatBytes(1023)).toBe('1023B');
  });
});

describe('cache list and clear against the API', () => {
  it('list prints KEY WORKFLOW TASK ATTEMPT AGE SIZE, newest first as the API answers', async () => {
    const r = await run(['cache', 'list']);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines[0]?.split(/ +/)).toEqual([...CACHE_COLUMNS]);
    expect(lines[1]?.split(/ {3,}/)).toEqual(['summary-a', 'report', 'summarize', '2', '3h', '812B']);
    expect(lines[2]?.split(/ {3,}/)).toEqual([`${LONG_KEY.slice(0, 47)}…`, 'nightly', 'digest', '1', '3d', '3.0MiB']);
    expect(sent()).toEqual([`GET /apis/data.agentflow.io/v1alpha1/namespaces/${NS}/memo`]);
  });

  it('list -o json prints the MemoList with whole keys; an empty cache says so on stderr', async () => {
    const json = await run(['cache', 'list', '-o', 'json']);
    const list = JSON.parse(json.stdout) as { kind: string; items: MemoItem[] };
    expect(list.kind).toBe('MemoList');
    expect(list.items.map((i) => i.key)).toEqual(['summary-a', LONG_KEY]);
    const empty = await run(['cache', 'list', '-n', 'quiet']);
    expect(empty).toMatchObject({ code: 0, stdout: '', stderr: 'No memoized outputs in quiet namespace.\n' });
  });

  it('clear --key drops that entry only; a key with none says nothing was cleared', async () => {
    const one = await run(['cache', 'clear', '--key', 'summary-a']);
    expect(one).toMatchObject({ code: 0, stdout: 'memoized output "summary-a" cleared\n' });
    expect(sent()).toEqual([`DELETE /apis/data.agentflow.io/v1alpha1/namespaces/${NS}/memo?key=summary-a`]);
    expect(fake.state.memo.get(NS)?.map((i) => i.key)).toEqual([LONG_KEY]);
    const none = await run(['cache', 'clear', '--key', 'summary-a']);
    expect(none).toMatchObject({ code: 0, stdout: 'no memoized output has key "summary-a": nothing cleared\n' });
  });

  it('clear --all drops every entry of the namespace and counts them', async () => {
    const r = await run(['cache', 'clear', '--all']);
    expect(r).toMatchObject({ code: 0, stdout: `2 memoized outputs cleared from ${NS} namespace\n` });
    expect(sent()).toEqual([`DELETE /apis/data.agentflow.io/v1alpha1/namespaces/${NS}/memo`]);
    expect(fake.state.memo.get(NS)).toEqual([]);
  });

  it('a refusal prints as kubectl does and exits 1', async () => {
    fake.state.forbidden.add(NS);
    const r = await run(['cache', 'clear', '--all']);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(
      `Error from server (Forbidden): workflows.agentflow.io is forbidden: User "alice" cannot delete resource "workflows" in API group "agentflow.io" in the namespace "${NS}"\n`,
    );
    expect(fake.state.memo.get(NS)).toHaveLength(2);
  });
});
