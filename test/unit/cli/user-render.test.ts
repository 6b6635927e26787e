import { describe, expect, it } from 'vitest';
import { AGENT_COLUMNS, agentRow } from '../../../src/cli/user/commands/agents.ts';
import { TASK_COLUMNS, taskTable, workflowTable } from '../../../src/cli/user/commands/read.ts';
import { describeFailure, formatServerError } from '../../../src/cli/user/errors.ts';
import { formatDuration, humanAge, table } from '../../../src/cli/user/format.ts';
import {
  ChangeLog,
  failureLines,
  renderView,
  type Snapshot,
  tasksFromStatus,
  treeLines,
} from '../../../src/cli/user/render.ts';
import { LiveView } from '../../../src/cli/user/watch.ts';
import { KubeApiError } from '../../../src/operator/kube/client.ts';
import { capture } from './capture.ts';
import { task, workflow } from './fake-cluster.ts';

const NOW = Date.parse('2025-06-01T12:00:00Z');
const ago = (s: number) => new Date(NOW - s * 1000).toISOString();

/** The TASK column of a tree (prefix and name), without the other columns. */
const names = (lines: string[]) => lines.slice(1).map((l) => /^(\s*\S.*?)(?: {3}|$)/.exec(l)?.[1]);

function diamond(extra: Partial<Snapshot> = {}): Snapshot {
  const wf = workflow(
    'hello',
    'ns',
    {
      tasks: [
        { name: 'a', handler: 'h' },
        { name: 'b', handler: 'h', dependsOn: ['a'] },
        { name: 'c', handler: 'h', dependsOn: ['a'] },
        { name: 'd', handler: 'h', dependsOn: ['b', 'c'] },
      ],
    },
    { phase: 'Running', startedAt: ago(60), progress: { total: 4, succeeded: 1, failed: 0, running: 2, queued: 0 } },
  );
  return {
    workflow: wf,
    source: 'api',
    tasks: [
      task('a', 'Succeeded', { agent: 'agent-0', startedAt: ago(60), finishedAt: ago(55) }),
      task('b', 'Running', { agent: 'agent-1', startedAt: ago(50), progress: 'half way' }),
      task('c', 'Running', { agent: 'agent-2', startedAt: ago(40) }),
      task('d', 'Pending'),
    ],
    ...extra,
  };
}

describe('the task tree', () => {
  it('draws the DAG: roots under the workflow, each task under its deepest dependency, the others named', () => {
    const lines = treeLines(diamond(), { now: NOW });
    expect(lines[0]).toMatch(/^TASK +PHASE +ATTEMPT +AGENT +DURATION +MESSAGE$/);
    expect(names(lines)).toEqual(['hello', '└─ a', '   ├─ b', '   └─ c', '      └─ d']);
    expect(lines.find((l) => l.includes('└─ d'))).toMatch(/Pending +\(after b, c\)$/);
    const b = lines.find((l) => l.includes('├─ b')) ?? '';
    expect(b.trim().split(/ {3,}/).slice(1)).toEqual(['Running', '#1', 'agent-1', '50.0s', 'half way']);
  });

  it('puts a task with two dependencies of different depth under the deeper one', () => {
    const snap = diamond();
    snap.workflow.spec.tasks = [
      { name: 'a', handler: 'h' },
      { name: 'b', handler: 'h', dependsOn: ['a'] },
      { name: 'c', handler: 'h', dependsOn: ['b'] },
      { name: 'd', handler: 'h', dependsOn: ['c', 'a'] },
    ];
    expect(names(treeLines(snap, { now: NOW }))).toEqual(['hello', '└─ a', '   └─ b', '      └─ c', '         └─ d']);
  });

  it('groups forEach instances under their template: at most 10 rows, trouble first, the rest counted', () => {
    const snap = diamond();
    snap.workflow.spec.tasks = [
      { name: 'split', handler: 'h' },
      { name: 'work', handler: 'h', dependsOn: ['split'], forEach: '${{ tasks.split.output }}' },
      { name: 'merge', handler: 'h', dependsOn: ['work'] },
    ];
    const work = Array.from({ length: 1000 }, (_, i) =>
      task(`work.${i}`, i === 500 ? 'Failed' : i >= 990 ? 'Running' : 'Succeeded', {
        attempt: i === 500 ? 3 : 1,
        attempts:
          i === 500
            ? [
                {
                  attempt: 3,
                  agent: 'agent-9',
                  ok: false,
                  finishedAt: ago(1),
                  error: { message: 'quota', retryable: false },
                },
              ]
            : [],
      }),
    );
    snap.tasks = [task('split', 'Succeeded'), ...work.reverse(), task('merge', 'Pending')];
    const lines = treeLines(snap, { now: NOW });
    expect(names(lines)).toEqual([
      'hello',
      '└─ split',
      '   └─ work [1000]',
      '      ├─ work.500',
      ...[990, 991, 992, 993, 994, 995, 996, 997, 998].map((i) => `      ├─ work.${i}`),
      '      ├─ … 990 more: 1 Running, 989 Succeeded',
      '      └─ merge',
    ]);
    expect(lines.find((l) => l.includes('work [1000]'))).toMatch(/Running .*10 Running, 989 Succeeded, 1 Failed$/);
    expect(lines.find((l) => l.includes('work.500'))).toMatch(/Failed +#3\/3 .*quota$/);
  });

  it('shows every instance of a small group, in index order, and spawned children under their parent', () => {
    const snap = diamond();
    snap.workflow.spec.tasks = [{ name: 'fan', handler: 'h', forEach: '${{ [1, 2, 3] }}' }];
    snap.tasks = [
      task('fan.2', 'Running'),
      task('fan.0', 'Succeeded'),
      task('fan.1', 'Running'),
      { ...task('fan.1~probe', 'Running'), template: 'probe', parent: 'fan.1' },
    ];
    expect(names(treeLines(snap, { now: NOW }))).toEqual([
      'hello',
      '└─ fan [3]',
      '   ├─ fan.0',
      '   ├─ fan.1',
      '   │  └─ fan.1~probe',
      '   └─ fan.2',
    ]);
  });

  it('shows a forEach template that has no instances yet as Pending', () => {
    const snap = diamond();
    snap.workflow.spec.tasks = [{ name: 'fan', handler: 'h', forEach: 'x' }];
    snap.tasks = [];
    expect(treeLines(snap, { now: NOW })[2]).toMatch(/^└─ fan \[0\] +Pending +forEach: no items yet$/);
  });

  it('paints phases only when the stream takes colour, and cuts every line to the width', () => {
    const plain = treeLines(diamond(), { now: NOW });
    expect(plain.join('\n')).not.toContain('\x1b[');
    const coloured = treeLines(diamond(), { now: NOW, color: true });
    expect(coloured.join('\n')).toContain('\x1b[32mSucceeded');
    expect(coloured.join('\n')).toContain('\x1b[36mRunning');
    for (const line of treeLines(diamond(), { now: NOW, width: 30 })) expect(line.length).toBeLessThanOrEqual(30);
  });

  it('fits the live view to the terminal height, saying how many rows it left out', () => {
    const snap = diamond();
    const lines = renderView(snap, { now: NOW, height: 10 });
    expect(lines).toHaveLength(10);
    expect(lines[0]).toBe('Name:       hello');
    expect(lines.at(-1)).toMatch(/^… \d+ more rows: enlarge the terminal/);
  });

  it('reads the bounded status.tasks when the data API is not there', () => {
    const wf = workflow('w', 'ns', { tasks: [{ name: 'fan', handler: 'h', forEach: 'x' }] });
    wf.status = {
      phase: 'Running',
      tasks: [
        { name: 'fan.0', phase: 'Succeeded', attempts: 1 },
        { name: 'fan.1', phase: 'Failed', attempts: 2, message: 'boom' },
        { name: 'fan.1~kid', phase: 'Running', attempts: 1 },
      ],
    };
    const tasks = tasksFromStatus(wf);
    expect(tasks.map((t) => [t.name, t.template, t.index, t.parent, t.attempt])).toEqual([
      ['fan.0', 'fan', 0, undefined, 1],
      ['fan.1', 'fan', 1, undefined, 2],
      ['fan.1~kid', 'kid', undefined, 'fan.1', 1],
    ]);
    expect(names(treeLines({ workflow: wf, tasks, source: 'status' }, { now: NOW }))).toEqual([
      'w',
      '└─ fan [2]',
      '   ├─ fan.0',
      '   └─ fan.1',
      '      └─ fan.1~kid',
    ]);
  });
});

describe('line mode', () => {
  it('prints one line per change, a workflow line when its phase changes, nothing for a first Pending', () => {
    const log = new ChangeLog();
    const snap = diamond();
    const raw = log.lines(snap, NOW);
    for (const l of raw) expect(l).toMatch(/^\d\d:\d\d:\d\d \S/);
    const first = raw.map((l) => l.slice(9)); // past the HH:MM:SS time
    expect(first).toEqual([
      'workflow/hello Running 1/4 (2 running)',
      'a Succeeded attempt 1 agent agent-0',
      'b Running attempt 1 agent agent-1 half way',
      'c Running attempt 1 agent agent-2',
    ]);
    expect(log.lines(snap, NOW)).toEqual([]);
    snap.tasks[2] = task('c', 'Retrying', {
      agent: 'agent-2',
      attempts: [
        { attempt: 1, agent: 'agent-2', ok: false, finishedAt: ago(1), error: { message: 'timeout', retryable: true } },
      ],
    });
    snap.tasks[3] = task('d', 'Queued');
    expect(log.lines(snap, NOW).map((l) => l.slice(9))).toEqual([
      'c Retrying attempt 1 agent agent-2 timeout',
      'd Queued',
    ]);
  });

  it('names the failed tasks and their errors when a run fails', () => {
    const snap = diamond();
    snap.tasks[1] = task('b', 'Failed', {
      attempt: 3,
      agent: 'agent-1',
      attempts: [
        {
          attempt: 3,
          agent: 'agent-1',
          ok: false,
          finishedAt: ago(1),
          error: { message: 'exit code 2', retryable: false },
        },
      ],
    });
    expect(failureLines(snap)).toEqual(['task b Failed (attempt 3, agent agent-1): exit code 2']);
  });
});

describe('the live view on a terminal', () => {
  it('redraws in place with one write per frame, and writes nothing when the frame did not change', () => {
    const io = capture({ tty: true });
    const view = new LiveView(io);
    view.draw(['one', 'two']);
    expect(io.stdout).toBe('\x1b[?25lone\x1b[K\ntwo\x1b[K\n\x1b[J');
    io.stdout = '';
    view.draw(['one', 'two']);
    expect(io.stdout).toBe('');
    view.draw(['one', 'three', 'four']);
    // Back up the two lines drawn, rewrite each and clear what is left below.
    expect(io.stdout).toBe('\x1b[2Fone\x1b[K\nthree\x1b[K\nfour\x1b[K\n\x1b[J');
    io.stdout = '';
    view.end();
    expect(io.stdout).toBe('\x1b[?25h');
  });
});

describe('tables', () => {
  it('list: NAME PHASE PROGRESS AGE, NAMESPACE first with -A, more with -o wide', () => {
    const wf = workflow('hello', 'team-a', {}, { phase: 'Running', progressSummary: '3/7', startedAt: ago(65) });
    wf.metadata.creationTimestamp = ago(90);
    expect(workflowTable([wf], { now: NOW, wide: false, namespaces: false })).toBe(
      'NAME    PHASE     PROGRESS   AGE\nhello   Running   3/7        90s\n',
    );
    const wide = workflowTable([wf], { now: NOW, wide: true, namespaces: true }).split('\n');
    expect(wide[0]).toBe('NAMESPACE   NAME    PHASE     PROGRESS   AGE   STARTED                DURATION   MESSAGE');
    expect(wide[1]).toBe('team-a      hello   Running   3/7        90s   2025-06-01T11:58:55Z   1m05s');
  });

  it('describe: TASK PHASE ATTEMPTS AGENT NODE START DURATION ERROR', () => {
    const rows = taskTable(
      [
        task('a', 'Succeeded', { agent: 'agent-0', node: 'node-1', startedAt: ago(10), finishedAt: ago(8) }),
        task('b', 'Failed', {
          attempt: 2,
          attempts: [
            {
              attempt: 2,
              agent: 'agent-0',
              ok: false,
              finishedAt: ago(1),
              error: { message: 'boom\nat line 3', retryable: false },
            },
          ],
        }),
      ],
      NOW,
    ).split('\n');
    expect(rows[0]?.split(/ +/)).toEqual([...TASK_COLUMNS]);
    expect(rows[1]?.split(/ {3,}/)).toEqual([
      'a',
      'Succeeded',
      '1',
      'agent-0',
      'node-1',
      '2025-06-01T11:59:50Z',
      '2.0s',
    ]);
    expect(rows[2]).toMatch(/^b +Failed +2 +boom at line 3$/);
  });

  it('agents: NAME POOL NODE SLOTS IN-FLIGHT FREE DRAINING HANDLERS, long handler lists cut unless wide', () => {
    const a = {
      name: 'agent-0',
      node: 'n1',
      capacity: 4,
      inFlight: 3,
      free: 1,
      draining: true,
      handlers: ['a', 'b', 'c', 'd', 'e', 'f'],
    };
    expect(table(AGENT_COLUMNS, [agentRow('pool', a, false)]).split('\n')[1]).toBe(
      'agent-0   pool   n1     4       3           1      true       a,b,c,d,… (2 more)',
    );
    expect(agentRow('pool', a, true).at(-1)).toBe('a,b,c,d,e,f');
  });

  it('ages as kubectl prints them, durations with their unit', () => {
    expect(
      [5e3, 119e3, 185e3, 600e3, 3 * 3600e3 + 60e3, 30 * 3600e3, 3 * 86400e3 + 3600e3, 400 * 86400e3].map(humanAge),
    ).toEqual(['5s', '119s', '3m5s', '10m', '3h1m', '30h', '3d1h', '400d']);
    expect([850, 4250, 185_000, 7_500_000].map(formatDuration)).toEqual(['850ms', '4.2s', '3m05s', '2h05m']);
  });
});

describe('errors from the server', () => {
  // As KubeClient builds them: the request and status before the Status body's message.
  const refused = new KubeApiError(
    403,
    'Forbidden',
    'GET /apis/agentflow.io/v1alpha1/namespaces/x/workflows: 403 workflows.agentflow.io is forbidden: User "bob" cannot list resource "workflows" in API group "agentflow.io" in the namespace "x"',
  );

  it('403 reads as kubectl prints it: the reason and the Status message alone, exit 1', () => {
    expect(formatServerError(refused)).toBe(
      'Error from server (Forbidden): workflows.agentflow.io is forbidden: User "bob" cannot list resource "workflows" in API group "agentflow.io" in the namespace "x"',
    );
    expect(describeFailure(refused)).toEqual({ text: `${formatServerError(refused)}\n`, exitCode: 1 });
  });

  it('a body that is no Status gets the reason of its HTTP status', () => {
    const e = new KubeApiError(403, '403', 'GET /apis/data.agentflow.io/v1alpha1/x: 403 forbidden by policy');
    expect(formatServerError(e)).toBe('Error from server (Forbidden): forbidden by policy');
    expect(
      formatServerError(new KubeApiError(404, 'NotFound', 'watch /x: 404 workflows.agentflow.io "w" not found')),
    ).toBe('Error from server (NotFound): workflows.agentflow.io "w" not found');
  });
});
