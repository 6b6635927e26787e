import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { CANCEL_ANNOTATION, RERUN_ANNOTATION, RETRY_ANNOTATION } from '../../../src/api/workflow-control.ts';
import { main } from '../../../src/cli/user/program.ts';
import { capture } from './capture.ts';
import { FakeCluster, task, workflow } from './fake-cluster.ts';

// The commands end to end against a stand-in API server (fake-cluster.ts): the requests they send,
// what they print where, and their exit codes. The e2e tests do the same against the real control plane.

const dir = mkdtempSync(join(tmpdir(), 'agentflow-cli-'));
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
const SPEC = {
  tasks: [
    { name: 'fetch', handler: 'h' },
    { name: 'sum', handler: 'h', dependsOn: ['fetch'] },
  ],
};

beforeEach(() => {
  const s = fake.state;
  for (const m of [s.workflows, s.templates, s.tasks, s.logs, s.agents]) m.clear();
  s.forbidden.clear();
  s.dataApiDown = false;
  fake.requests.length = 0;
  fake.onRequest = undefined;
  fake.onPatch = undefined;
  s.workflows.set(`${NS}/hello`, workflow('hello', NS, SPEC, { phase: 'Running', progressSummary: '1/2' }));
  s.tasks.set(`${NS}/hello`, [
    task('fetch', 'Succeeded', {
      agent: 'agent-0',
      startedAt: '2025-01-01T00:00:00Z',
      finishedAt: '2025-01-01T00:00:02Z',
      output: { pages: 3 },
    }),
    task('sum', 'Running', { agent: 'agent-1', startedAt: '2025-01-01T00:00:03Z' }),
  ]);
});

async function run(argv: string[], stdin?: string) {
  const io = capture(stdin === undefined ? {} : { stdin });
  const code = await main([...argv, '--kubeconfig', kubeconfig], io);
  return { code, stdout: io.stdout, stderr: io.stderr };
}

const paths = () => fake.requests.map((r) => `${r.method} ${r.path}`);

describe('kubeconfig and namespace', () => {
  it("uses the context's namespace, -n instead, and another context's with --context", async () => {
    await run(['list']);
    await run(['list', '-n', 'other-ns']);
    await run(['list', '--context', 'other']);
    await run(['list', '-A']);
    expect(paths()).toEqual([
      `GET /apis/agentflow.io/v1alpha1/namespaces/${NS}/workflows`,
      'GET /apis/agentflow.io/v1alpha1/namespaces/other-ns/workflows',
      'GET /apis/agentflow.io/v1alpha1/namespaces/default/workflows',
      'GET /apis/agentflow.io/v1alpha1/workflows',
    ]);
  });

  it("sends the kubeconfig user's credentials", async () => {
    const r = await run(['get', 'hello', '-o', 'name']);
    expect(r).toMatchObject({ code: 0, stdout: 'workflow.agentflow.io/hello\n' });
    expect(fake.requests.map((q) => q.auth)).toEqual(['Bearer alice-token']);
  });

  it('an unknown --context is an error naming the flag and the contexts there are', async () => {
    const r = await run(['list', '--context', 'nope']);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe('error: --context "nope": the kubeconfig has no such context (it has: fake, other)\n');
    expect(fake.requests).toEqual([]);
  });
});

describe('errors from the API server', () => {
  it('403 from the Kubernetes API prints as kubectl does and exits 1, for every kind of command', async () => {
    fake.state.forbidden.add('locked');
    fake.state.workflows.set('locked/hello', workflow('hello', 'locked', SPEC));
    for (const argv of [
      ['list'],
      ['get', 'hello'],
      ['describe', 'hello'],
      ['watch', 'hello'],
      ['logs', 'hello'],
      ['cancel', 'hello'],
      ['suspend', 'hello'],
      ['resume', 'hello'],
      ['retry', 'hello'],
      ['resubmit', 'hello'],
      ['agents'],
    ]) {
      const r = await run([...argv, '-n', 'locked']);
      expect(r.code, argv.join(' ')).toBe(1);
      expect(r.stdout, argv.join(' ')).toBe('');
      expect(r.stderr, argv.join(' ')).toMatch(
        /^Error from server \(Forbidden\): (workflows|agentpools)\.agentflow\.io( "hello")? is forbidden: User "alice" cannot \w+ resource "(workflows|agentpools)" in API group "agentflow\.io" in the namespace "locked"\n$/,
      );
    }
  });

  it('403 from the data API prints its Status message the same way', async () => {
    fake.state.forbidden.add('locked');
    for (const argv of [
      ['output', 'hello', 'fetch'],
      ['logs', 'hello', 'fetch'],
      ['agents', 'default'],
    ]) {
      const r = await run([...argv, '-n', 'locked']);
      expect(r.code, argv.join(' ')).toBe(1);
      expect(r.stderr, argv.join(' ')).toBe(
        'Error from server (Forbidden): user "alice" may not get workflows "' +
          (argv[0] === 'agents' ? 'default' : 'hello') +
          '" in namespace "locked"\n',
      );
    }
  });

  it('404 says what was not found', async () => {
    const r = await run(['get', 'nope']);
    expect(r).toEqual({
      code: 1,
      stdout: '',
      stderr: 'Error from server (NotFound): workflows.agentflow.io "nope" not found\n',
    });
    const t = await run(['output', 'hello', 'nope']);
    expect(t.stderr).toBe('Error from server (NotFound): workflow "hello" has no task "nope"\n');
  });

  it('a data API that is down is named, with where to look', async () => {
    fake.state.dataApiDown = true;
    const r = await run(['output', 'hello', 'fetch']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /^error: the data API data\.agentflow\.io\/v1alpha1 is not available \(503 service unavailable\).*kubectl get apiservice v1alpha1\.data\.agentflow\.io/,
    );
  });
});

describe('list, get, describe, output, agents', () => {
  it('list prints the table, -o name names, and says so on stderr when there is nothing', async () => {
    expect((await run(['list'])).stdout).toMatch(/^NAME +PHASE +PROGRESS +AGE\nhello +Running +1\/2 +9\ds\n$/);
    expect((await run(['list', '-o', 'name'])).stdout).toBe('workflow.agentflow.io/hello\n');
    expect(JSON.parse((await run(['list', '-o', 'json'])).stdout)).toMatchObject({
      kind: 'WorkflowList',
      items: [{ metadata: { name: 'hello' } }],
    });
    expect(await run(['list', '-n', 'empty'])).toEqual({
      code: 0,
      stdout: '',
      stderr: 'No resources found in empty namespace.\n',
    });
  });

  it('get prints the summary; describe adds the task table from the data API', async () => {
    const g = await run(['get', 'hello']);
    expect(g.stdout).toBe('Name:       hello\nNamespace:  team-a\nPhase:      Running\nProgress:   1/2\n');
    const d = await run(['describe', 'hello']);
    expect(d.code).toBe(0);
    const lines = d.stdout.split('\n');
    expect(lines.slice(lines.indexOf('Tasks:') + 1, -1)).toEqual([
      expect.stringMatching(/^TASK +PHASE +ATTEMPTS +AGENT +NODE +START +DURATION +ERROR$/),
      'fetch   Succeeded   1          agent-0          2025-01-01T00:00:00Z   2.0s',
      expect.stringMatching(/^sum +Running +1 +agent-1 +2025-01-01T00:00:03Z +\d/),
    ]);
  });

  it('describe falls back to status.tasks, saying so, when the data API is down', async () => {
    fake.state.dataApiDown = true;
    const wf = fake.state.workflows.get(`${NS}/hello`);
    if (wf?.status) wf.status.tasks = [{ name: 'fetch', phase: 'Succeeded', attempts: 1 }];
    const d = await run(['describe', 'hello']);
    expect(d.code).toBe(0);
    expect(d.stderr).toMatch(/^warning: the data API .* showing the Workflow's status.tasks/);
    expect(d.stdout).toMatch(/\nfetch +Succeeded +1\n$/);
  });

  it('output prints the task output as JSON, or YAML', async () => {
    expect(await run(['output', 'hello', 'fetch'])).toEqual({ code: 0, stdout: '{\n  "pages": 3\n}\n', stderr: '' });
    expect((await run(['output', 'hello', 'fetch', '-o', 'yaml'])).stdout).toBe('pages: 3\n');
    const none = await run(['output', 'hello', 'sum']);
    expect(none).toMatchObject({
      code: 1,
      stderr: 'error: task sum of workflow hello has no output (it is Running)\n',
    });
  });

  it('agents lists one pool, or every pool of the namespace', async () => {
    const list = (pool: string, name: string) => ({
      apiVersion: 'data.agentflow.io/v1alpha1' as const,
      kind: 'AgentList' as const,
      metadata: { namespace: NS, pool },
      items: [{ name, node: 'n1', capacity: 2, inFlight: 1, free: 1, draining: false, handlers: ['h'] }],
    });
    fake.state.agents.set(`${NS}/gpu`, list('gpu', 'gpu-0'));
    fake.state.agents.set(`${NS}/cpu`, list('cpu', 'cpu-0'));
    const one = await run(['agents', 'gpu']);
    expect(one.stdout).toBe(
      'NAME    POOL   NODE   SLOTS   IN-FLIGHT   FREE   DRAINING   HANDLERS\ngpu-0   gpu    n1     2       1           1      false      h\n',
    );
    const all = await run(['agents']);
    expect(
      all.stdout
        .split('\n')
        .slice(1, -1)
        .map((l) => l.split(/ +/)[0]),
    ).toEqual(['gpu-0', 'cpu-0']);
  });
});

describe('submit', () => {
  const file = join(dir, 'wf.yaml');
  writeFileSync(
    file,
    'apiVersion: agentflow.io/v1alpha1\nkind: Workflow\nmetadata:\n  name: demo\nspec:\n  pool: default\n  inputs:\n    topic: go\n  tasks:\n    - name: a\n      handler: h\n',
  );

  it('creates the Workflow with -p inputs (numbers stay numbers) and prints what kubectl prints', async () => {
    const r = await run(['submit', '-f', file, '-p', 'count=3', '-p', 'topic=rust']);
    expect(r).toEqual({ code: 0, stdout: 'workflow.agentflow.io/demo created\n', stderr: '' });
    const post = fake.requests.find((q) => q.method === 'POST');
    expect(post?.path).toBe(`/apis/agentflow.io/v1alpha1/namespaces/${NS}/workflows`);
    expect(post?.body).toMatchObject({
      metadata: { name: 'demo', namespace: NS },
      spec: { inputs: { topic: 'rust', count: 3 } },
    });
  });

  it('--generate-name makes metadata.generateName from the name; -f - reads stdin', async () => {
    const text =
      '{"kind":"Workflow","metadata":{"name":"demo"},"spec":{"pool":"p","tasks":[{"name":"a","handler":"h"}]}}';
    const r = await run(['submit', '-f', '-', '--generate-name'], text);
    expect(r.stdout).toBe('workflow.agentflow.io/demo-x7k2q created\n');
    const body = fake.requests.find((q) => q.method === 'POST')?.body as { metadata: Record<string, unknown> };
    expect(body.metadata).toMatchObject({ generateName: 'demo-' });
    expect(body.metadata.name).toBeUndefined();
  });

  it('refuses a file that is not one Workflow, or disagrees with -n, before sending anything', async () => {
    const two = join(dir, 'two.yaml');
    writeFileSync(two, 'kind: Workflow\nmetadata: {name: a}\n---\nkind: Workflow\nmetadata: {name: b}\n');
    const pool = join(dir, 'pool.yaml');
    writeFileSync(pool, 'kind: AgentPool\nmetadata: {name: a}\n');
    const elsewhere = join(dir, 'elsewhere.yaml');
    writeFileSync(elsewhere, 'kind: Workflow\nmetadata: {name: a, namespace: prod}\n');
    expect((await run(['submit', '-f', two])).stderr).toBe(
      `error: ${two}: holds 2 objects; submit takes exactly one Workflow\n`,
    );
    expect((await run(['submit', '-f', pool])).stderr).toBe(`error: ${pool}: is a AgentPool, not a Workflow\n`);
    expect((await run(['submit', '-f', elsewhere, '-n', 'dev'])).stderr).toMatch(
      /in namespace prod, not dev \(--namespace\)/,
    );
    const missing = await run(['submit', '-f', join(dir, 'none.yaml')]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^error: -f .*none\.yaml: ENOENT/);
    expect(fake.requests).toEqual([]);
  });
});

describe('submit --from workflowtemplate/NAME', () => {
  const research = {
    apiVersion: 'agentflow.io/v1alpha1',
    kind: 'WorkflowTemplate',
    metadata: { name: 'research', namespace: NS },
    spec: {
      parameters: [
        { name: 'topic', type: 'string', required: true },
        { name: 'version', type: 'string' },
        { name: 'depth', type: 'integer', default: 2 },
        { name: 'style', type: 'string', enum: ['brief', 'long'] },
      ],
      pool: 'p',
      tasks: [{ name: 'a', handler: 'h' }],
    },
  };
  beforeEach(() => fake.state.templates.set(`${NS}/research`, research));

  it("creates a Workflow that runs the template, each -p as its parameter's type wants it", async () => {
    const r = await run([
      'submit',
      '--from',
      'workflowtemplate/research',
      '-p',
      'topic=yes',
      '-p',
      'version=3.10',
      '-p',
      'depth=4',
    ]);
    expect(r).toEqual({ code: 0, stdout: 'workflow.agentflow.io/research-x7k2q created\n', stderr: '' });
    expect(paths()).toEqual([
      `GET /apis/agentflow.io/v1alpha1/namespaces/${NS}/workflowtemplates/research`,
      `POST /apis/agentflow.io/v1alpha1/namespaces/${NS}/workflows`,
    ]);
    expect(fake.requests[1]?.body).toEqual({
      apiVersion: 'agentflow.io/v1alpha1',
      kind: 'Workflow',
      metadata: { generateName: 'research-', namespace: NS },
      // A string parameter takes the text as typed: "yes" is no boolean, "3.10" no 3.1.
      spec: { workflowTemplateRef: { name: 'research' }, inputs: { topic: 'yes', version: '3.10', depth: 4 } },
    });
  });

  it('refuses inputs the template would refuse, naming each -p, and creates nothing', async () => {
    const r = await run([
      'submit',
      '--from',
      'wftmpl/research',
      '-p',
      'depth=deep',
      '-p',
      'topik=x',
      '-p',
      'style=epic',
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(
      [
        'error: workflowtemplate/research refuses the inputs:',
        '  -p depth: parameter "depth" of WorkflowTemplate "research" must be an integer, not string "deep"',
        '  -p topik: WorkflowTemplate "research" has no parameter "topik" (it declares topic, version, depth, style)',
        '  -p style: parameter "style" of WorkflowTemplate "research" must be one of "brief", "long"',
        '  -p topic: WorkflowTemplate "research" requires parameter "topic"',
        '',
      ].join('\n'),
    );
    expect(fake.requests.filter((q) => q.method === 'POST')).toEqual([]);
  });

  it('names a template that is not there, and a --from that is no template', async () => {
    const missing = await run(['submit', '--from', 'workflowtemplate/nope']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/workflowtemplates\.agentflow\.io "nope" not found/);
    const bad = await run(['submit', '--from', 'template/Research']);
    expect(bad.stderr).toBe(
      'error: --from template/Research: expected workflowtemplate/<name>, a WorkflowTemplate\'s name (lower-case alphanumerics, "-" and ".")\n',
    );
    expect(fake.requests.filter((q) => q.method === 'POST')).toEqual([]);
  });
});

describe('watch (not a terminal: one line per change)', () => {
  /** Moves the run along on each GET of the Workflow. */
  function script(steps: ((wf: ReturnType<typeof workflow>) => void)[]) {
    let n = 0;
    fake.onRequest = (r) => {
      if (r.method !== 'GET' || !r.path.endsWith('/workflows/hello')) return;
      const wf = fake.state.workflows.get(`${NS}/hello`);
      const step = steps[n++];
      if (wf && step) step(wf);
    };
  }
  const tasks = () => fake.state.tasks.get(`${NS}/hello`) ?? [];

  it('prints each change and exits 0 when the workflow Succeeded', async () => {
    script([
      () => {},
      (wf) => {
        tasks()[1] = task('sum', 'Succeeded', { agent: 'agent-1' });
        wf.status = { phase: 'Succeeded', progressSummary: '2/2' };
      },
    ]);
    const r = await run(['watch', 'hello']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.split('\n').map((l) => l.replace(/^\d\d:\d\d:\d\d /, ''))).toEqual([
      'workflow/hello Running 1/2',
      'fetch Succeeded attempt 1 agent agent-0',
      'sum Running attempt 1 agent agent-1',
      'workflow/hello Succeeded 2/2',
      'sum Succeeded attempt 1 agent agent-1',
      'workflow/hello Succeeded 2/2',
      '',
    ]);
  });

  it('exits 1 when it Failed, naming the failed task and its error on stderr', async () => {
    script([
      (wf) => {
        tasks()[1] = task('sum', 'Failed', {
          attempt: 3,
          agent: 'agent-1',
          attempts: [
            {
              attempt: 3,
              agent: 'agent-1',
              ok: false,
              finishedAt: '2025-01-01T00:01:00Z',
              error: { message: 'exit status 2', retryable: false },
            },
          ],
        });
        wf.status = { phase: 'Failed', progressSummary: '1/2', message: 'task sum failed' };
      },
    ]);
    const r = await run(['watch', 'hello']);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/ sum Failed attempt 3 agent agent-1 exit status 2\n/);
    expect(r.stderr).toBe(
      'error: workflow hello Failed: task sum failed\n  task sum Failed (attempt 3, agent agent-1): exit status 2\n',
    );
  });

  it('follows status.tasks when the data API is down', async () => {
    fake.state.dataApiDown = true;
    script([
      (wf) => {
        wf.status = { phase: 'Cancelled', tasks: [{ name: 'fetch', phase: 'Cancelled', attempts: 1 }] };
      },
    ]);
    const r = await run(['watch', 'hello']);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/^\d\d:\d\d:\d\d workflow\/hello Cancelled\n\d\d:\d\d:\d\d fetch Cancelled attempt 1\n/);
  });
});

describe('logs', () => {
  beforeEach(() => {
    fake.state.logs.set(`${NS}/hello/fetch/1`, { lines: ['fetching', 'got 3 pages'] });
    fake.state.logs.set(`${NS}/hello/sum/1`, { lines: ['summing'] });
  });

  it("prints a task's log as is, and every task's prefixed [task] in the order they started", async () => {
    expect(await run(['logs', 'hello', 'fetch'])).toEqual({ code: 0, stdout: 'fetching\ngot 3 pages\n', stderr: '' });
    expect((await run(['logs', 'hello'])).stdout).toBe('[fetch] fetching\n[fetch] got 3 pages\n[sum] summing\n');
    const q = fake.requests.find((r) => r.path.endsWith('/log'))?.query;
    expect(q?.get('task')).toBe('fetch');
  });

  it('passes --attempt and --timestamps on', async () => {
    fake.state.logs.set(`${NS}/hello/fetch/2`, { lines: ['second try'] });
    expect((await run(['logs', 'hello', 'fetch', '--attempt', '2', '--timestamps'])).stdout).toBe('second try\n');
    const q = fake.requests.find((r) => r.path.endsWith('/log'))?.query;
    expect([q?.get('attempt'), q?.get('timestamps'), q?.get('follow')]).toEqual(['2', 'true', null]);
  });

  it('--stream prints the streamed output exactly as streamed (no newline added), -f as it comes', async () => {
    const out = { lines: ['Hel', 'lo, wö'], open: true };
    fake.state.logs.set(`${NS}/hello/sum/1/stream`, out);
    fake.onRequest = (r) => {
      if (!r.path.endsWith('/log')) return;
      setTimeout(() => {
        out.lines.push('rld', ' 🙂');
        out.open = false;
        const t = fake.state.tasks.get(`${NS}/hello`) ?? [];
        t[1] = task('sum', 'Succeeded');
        fake.flushStreams();
      }, 100);
    };
    expect(await run(['logs', 'hello', 'sum', '--stream', '-f'])).toEqual({
      code: 0,
      stdout: 'Hello, wörld 🙂',
      stderr: '',
    });
    const q = fake.requests.find((r) => r.path.endsWith('/log'))?.query;
    expect([q?.get('stream'), q?.get('follow')]).toEqual(['true', 'true']);
  });

  it('-f on a workflow just created waits for its run to have the task (the API answers 404 until then)', async () => {
    fake.state.tasks.set(`${NS}/hello`, []);
    fake.state.logs.set(`${NS}/hello/sum/1`, { lines: ['summing'] });
    let asked = 0;
    fake.onRequest = (r) => {
      if (!r.path.endsWith('/tasks')) return;
      // The run appears after the second look.
      if (++asked === 2) fake.state.tasks.set(`${NS}/hello`, [task('sum', 'Succeeded')]);
    };
    expect(await run(['logs', 'hello', 'sum', '-f'])).toEqual({ code: 0, stdout: 'summing\n', stderr: '' });
    // A task the spec does not have is the 404 it was, at once.
    const r = await run(['logs', 'hello', 'typo', '-f']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('has no task "typo"');
  });

  it('-f streams lines as they come and ends when the task has finished', async () => {
    const log = { lines: ['summing'], open: true };
    fake.state.logs.set(`${NS}/hello/sum/1`, log);
    fake.onRequest = (r) => {
      if (!r.path.endsWith('/log')) return;
      setTimeout(() => {
        log.lines.push('half way', 'done');
        log.open = false;
        const t = fake.state.tasks.get(`${NS}/hello`) ?? [];
        t[1] = task('sum', 'Succeeded');
        fake.flushStreams();
      }, 100);
    };
    const r = await run(['logs', 'hello', 'sum', '-f']);
    expect(r).toEqual({ code: 0, stdout: 'summing\nhalf way\ndone\n', stderr: '' });
    expect(fake.requests.find((q) => q.path.endsWith('/log'))?.query.get('follow')).toBe('true');
  });
});

describe('control', () => {
  const patches = () => fake.requests.filter((r) => r.method === 'PATCH').map((r) => r.body);

  it('cancel sets the cancel annotation; suspend and resume set spec.suspend', async () => {
    expect((await run(['cancel', 'hello'])).stdout).toBe('workflow.agentflow.io/hello cancel requested\n');
    expect((await run(['suspend', 'hello'])).stdout).toBe('workflow.agentflow.io/hello suspended\n');
    expect((await run(['resume', 'hello'])).stdout).toBe('workflow.agentflow.io/hello resumed\n');
    expect(patches()).toEqual([
      { metadata: { annotations: { [CANCEL_ANNOTATION]: expect.any(String) } } },
      { spec: { suspend: true } },
      { spec: { suspend: false } },
    ]);
  });

  it('cancel refuses a finished run (its annotation would cancel a later retry)', async () => {
    const wf = fake.state.workflows.get(`${NS}/hello`);
    if (wf?.status) wf.status.phase = 'Failed';
    expect(await run(['cancel', 'hello'])).toEqual({
      code: 1,
      stdout: '',
      stderr: 'error: workflow hello has finished (Failed): nothing to cancel\n',
    });
    expect(patches()).toEqual([]);
  });

  it("retry asks with a new token and prints the operator's answer to it", async () => {
    fake.onPatch = (wf) => {
      const token = wf.metadata.annotations?.[RETRY_ANNOTATION] as string;
      wf.status = {
        ...wf.status,
        lastRetry: { token, at: '2025-01-01T00:00:00Z', started: true, tasks: 1, message: 're-running 1 task' },
      };
    };
    expect(await run(['retry', 'hello'])).toEqual({
      code: 0,
      stdout: 'workflow.agentflow.io/hello retrying: re-running 1 task\n',
      stderr: '',
    });
    const first = (patches()[0] as { metadata: { annotations: Record<string, string> } }).metadata.annotations[
      RETRY_ANNOTATION
    ];
    await run(['retry', 'hello']);
    const second = (patches()[1] as { metadata: { annotations: Record<string, string> } }).metadata.annotations[
      RETRY_ANNOTATION
    ];
    expect(second).not.toBe(first);
  });

  it('a refused retry exits 1 with the reason; no answer in time says so', async () => {
    fake.onPatch = (wf) => {
      const token = wf.metadata.annotations?.[RETRY_ANNOTATION] as string;
      wf.status = {
        ...wf.status,
        lastRetry: { token, at: '2025-01-01T00:00:00Z', started: false, tasks: 0, message: 'the run is still Running' },
      };
    };
    expect(await run(['retry', 'hello'])).toEqual({
      code: 1,
      stdout: '',
      stderr: 'error: retry of workflow hello refused: the run is still Running\n',
    });
    fake.onPatch = undefined;
    const late = await run(['retry', 'hello', '--timeout', '300ms']);
    expect(late.code).toBe(1);
    expect(late.stderr).toMatch(/^error: the operator has not answered the retry of workflow hello within 300ms/);
  });

  it('resubmit prints the name of the copy the operator made', async () => {
    fake.onPatch = (wf) => {
      const token = wf.metadata.annotations?.[RERUN_ANNOTATION] as string;
      wf.status = { ...wf.status, lastRerun: { token, name: 'hello-rerun-1' } };
    };
    expect(await run(['resubmit', 'hello'])).toEqual({
      code: 0,
      stdout: 'workflow.agentflow.io/hello-rerun-1 created (a re-run of hello)\n',
      stderr: '',
    });
  });
});
