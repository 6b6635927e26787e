import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml, stringify } from 'yaml';
import { CRD_NAMES } from '../../../src/api/crds.ts';
import { MAX_DEPENDENCIES, MAX_TASKS } from '../../../src/api/workflow.ts';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import { testCluster, uniqueName } from '../../cluster/testing.ts';

// The CRDs on the real kube-apiserver: kubectl refuses bad manifests at once,
// naming the field; good ones get defaults, printer columns and scaling.

type Obj = Record<string, unknown> & { metadata: { name: string }; spec: Record<string, unknown> };
let cluster: ClusterHandle;
const ns = uniqueName('crds');
const examplePool = parseYaml(readFileSync('deploy/examples/agentpool.yaml', 'utf8')) as Obj;
const exampleWorkflow = parseYaml(readFileSync('deploy/examples/workflow-research.yaml', 'utf8')) as Obj;
const exampleTemplate = parseYaml(readFileSync('deploy/examples/workflowtemplate-research.yaml', 'utf8')) as Obj;

const clone = <T>(o: T): T => structuredClone(o);
// biome-ignore lint/suspicious/noExplicitAny: test mutations reach into arbitrary manifest paths
type Mutate = (o: any) => void;

async function dryRun(obj: unknown) {
  return cluster.kubectl(['apply', '--dry-run=server', '-n', ns, '-f', '-'], { input: stringify(obj) });
}

beforeAll(async () => {
  cluster = testCluster();
  const crds = await cluster.kubectl(['apply', '--server-side', '--force-conflicts', '-f', 'deploy/crds/']);
  expect(crds.stderr).toBe('');
  const est = await cluster.kubectl([
    'wait',
    '--for=condition=Established',
    ...CRD_NAMES.map((n) => `crd/${n}`),
    '--timeout=30s',
  ]);
  expect(est.code).toBe(0);
  await cluster.client.post('/api/v1/namespaces', { metadata: { name: ns } });
});

afterAll(async () => {
  await cluster.client.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  await cluster.close();
});

const poolCases: [string, Mutate, string][] = [
  [
    'a name too long for agent pod names',
    (o) => {
      o.metadata.name = 'p'.repeat(53);
    },
    'metadata.name must be at most 52 characters',
  ],
  [
    'capacity 0',
    (o) => {
      o.spec.agent.capacity = 0;
    },
    'spec.agent.capacity: Invalid value: 0: spec.agent.capacity in body should be greater than or equal to 1',
  ],
  [
    'a rate limit with both perSecond and perMinute',
    (o) => {
      o.spec.rateLimits = [{ name: 'calls', perSecond: 10, perMinute: 600 }];
    },
    'spec.rateLimits[0].perSecond: Invalid value: "object": a rate limit needs exactly one of perSecond and perMinute',
  ],
  [
    'a rate limit with neither perSecond nor perMinute',
    (o) => {
      o.spec.rateLimits = [{ name: 'calls', burst: 5 }];
    },
    'spec.rateLimits[0].perSecond: Invalid value: "object": a rate limit needs exactly one of perSecond and perMinute',
  ],
  [
    'a rate limit of 0 per second',
    (o) => {
      o.spec.rateLimits = [{ name: 'calls', perSecond: 0 }];
    },
    'spec.rateLimits[0].perSecond: Invalid value: 0: spec.rateLimits[0].perSecond in body should be greater than 0',
  ],
  [
    'two rate limits of one name',
    (o) => {
      o.spec.rateLimits = [
        { name: 'calls', perSecond: 1 },
        { name: 'calls', perMinute: 1 },
      ];
    },
    'spec.rateLimits[1]: Duplicate value: {"name":"calls"}',
  ],
  [
    'minReplicas above maxReplicas',
    (o) => {
      o.spec.autoscaling = { minReplicas: 4, maxReplicas: 2 };
    },
    'spec.autoscaling.minReplicas: Invalid value: "object": minReplicas must be less than or equal to maxReplicas',
  ],
  [
    'negative replicas',
    (o) => {
      o.spec.replicas = -1;
    },
    'spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 0',
  ],
  [
    'maxReplicas 0',
    (o) => {
      o.spec.autoscaling = { minReplicas: 0, maxReplicas: 0 };
    },
    'spec.autoscaling.maxReplicas: Invalid value: 0',
  ],
  [
    'no template',
    (o) => {
      delete o.spec.template;
    },
    'spec.template: Required value',
  ],
  [
    'no agent section',
    (o) => {
      delete o.spec.agent;
    },
    'spec.agent: Required value',
  ],
  [
    'a template without containers',
    (o) => {
      o.spec.template.spec = {};
    },
    'spec.template.spec.containers: Required value',
  ],
  [
    'an empty container list',
    (o) => {
      o.spec.template.spec.containers = [];
    },
    'spec.template.spec.containers: Invalid value: 0: spec.template.spec.containers in body should have at least 1 items',
  ],
  [
    'a container without an image',
    (o) => {
      delete o.spec.template.spec.containers[0].image;
    },
    'spec.template.spec.containers[0].image: Required value',
  ],
  [
    'an unknown placement strategy',
    (o) => {
      o.spec.placement.strategy = 'Random';
    },
    'spec.placement.strategy: Unsupported value: "Random": supported values: "Spread", "BinPack"',
  ],
  [
    'maxPerNode 0',
    (o) => {
      o.spec.placement.maxPerNode = 0;
    },
    'spec.placement.maxPerNode: Invalid value: 0',
  ],
  [
    'an unknown scheduler',
    (o) => {
      o.spec.placement.scheduler = 'volcano';
    },
    'spec.placement.scheduler: Unsupported value: "volcano"',
  ],
  [
    'a handler name with a space',
    (o) => {
      o.spec.agent.handlers = ['web search'];
    },
    'spec.agent.handlers[0]: Invalid value: "web search"',
  ],
  [
    'a duplicate handler',
    (o) => {
      o.spec.agent.handlers = ['plan', 'plan'];
    },
    'spec.agent.handlers[1]: Duplicate value: "plan"',
  ],
  [
    'an unknown field',
    (o) => {
      o.spec.agent.slots = 3;
    },
    'unknown field "spec.agent.slots"',
  ],
  [
    'a capacity given as a string',
    (o) => {
      o.spec.agent.capacity = 'four';
    },
    'spec.agent.capacity: Invalid value: "string": spec.agent.capacity in body must be of type integer: "string"',
  ],
  [
    'a sharing weight of 0',
    (o) => {
      o.spec.sharing = { weight: 0 };
    },
    'spec.sharing.weight: Invalid value: 0: spec.sharing.weight in body should be greater than or equal to 1',
  ],
  [
    'a sharing weight of 1001',
    (o) => {
      o.spec.sharing = { weight: 1001 };
    },
    'spec.sharing.weight: Invalid value: 1001: spec.sharing.weight in body should be less than or equal to 1000',
  ],
  [
    'a shared namespace of weight 0',
    (o) => {
      o.spec.sharing = { namespaces: [{ name: 'team-a', weight: 0 }] };
    },
    'spec.sharing.namespaces[0].weight: Invalid value: 0: spec.sharing.namespaces[0].weight in body should be greater than or equal to 1',
  ],
  [
    'a shared namespace of weight 1001',
    (o) => {
      o.spec.sharing = { namespaces: [{ name: 'team-a', weight: 1001 }] };
    },
    'spec.sharing.namespaces[0].weight: Invalid value: 1001: spec.sharing.namespaces[0].weight in body should be less than or equal to 1000',
  ],
  [
    'a namespace shared with twice',
    (o) => {
      o.spec.sharing = { namespaces: [{ name: 'team-a' }, { name: 'team-a', weight: 2 }] };
    },
    'spec.sharing.namespaces[1]: Duplicate value: {"name":"team-a"}',
  ],
  [
    'an invalid shared namespace name',
    (o) => {
      o.spec.sharing = { namespaces: [{ name: 'Team_A' }] };
    },
    'spec.sharing.namespaces[0].name: Invalid value: "Team_A"',
  ],
  [
    'a shared namespace without a name',
    (o) => {
      o.spec.sharing = { namespaces: [{ weight: 2 }] };
    },
    'spec.sharing.namespaces[0].name: Required value',
  ],
  [
    'more than 256 shared namespaces',
    (o) => {
      o.spec.sharing = { namespaces: Array.from({ length: 257 }, (_, i) => ({ name: `team-${i}` })) };
    },
    'spec.sharing.namespaces: Too many: 257: must have at most 256 items',
  ],
];

const tasksOf = (o: Obj) => o.spec.tasks as Record<string, unknown>[];
const workflowCases: [string, Mutate, string][] = [
  [
    'no tasks',
    (o) => {
      o.spec.tasks = [];
    },
    'spec.tasks: Invalid value: 0: spec.tasks in body should have at least 1 items',
  ],
  [
    'a missing tasks list',
    (o) => {
      delete o.spec.tasks;
    },
    'spec.tasks: Required value',
  ],
  [
    'a duplicate task name',
    (o) => {
      tasksOf(o)[1] = { ...tasksOf(o)[1], name: 'plan' };
    },
    'spec.tasks[1]: Duplicate value: {"name":"plan"}',
  ],
  [
    'a dependency on an unknown task',
    (o) => {
      tasksOf(o)[2] = { ...tasksOf(o)[2], dependsOn: ['research', 'review'] };
    },
    'spec.tasks: Invalid value: "object": task "write" depends on "review", which is not a task of spec.tasks',
  ],
  [
    'unknown dependencies in two tasks (the first named, the others mentioned)',
    (o) => {
      tasksOf(o)[1] = { ...tasksOf(o)[1], dependsOn: ['plan', 'plann'] };
      tasksOf(o)[2] = { ...tasksOf(o)[2], dependsOn: ['reserch'] };
    },
    'task "research" depends on "plann", which is not a task of spec.tasks; other dependsOn entries name no task either',
  ],
  [
    'the most tasks, each with the most dependencies, all unknown (the message stays within the cost budget)',
    (o) => {
      o.spec.tasks = Array.from({ length: MAX_TASKS }, (_, i) => ({
        name: `t${i}`,
        handler: 'h',
        dependsOn: Array.from({ length: MAX_DEPENDENCIES }, (_, j) => `u${i}-${j}`),
      }));
    },
    'task "t0" depends on "u0-0", which is not a task of spec.tasks; other dependsOn entries name no task either',
  ],
  [
    'an unknown dependency in the last task of the most',
    (o) => {
      o.spec.tasks = Array.from({ length: MAX_TASKS }, (_, i) => ({
        name: `t${i}`,
        handler: 'h',
        ...(i > 0 && { dependsOn: Array.from({ length: Math.min(i, MAX_DEPENDENCIES) }, (_, j) => `t${i - 1 - j}`) }),
      }));
      const last = tasksOf(o)[MAX_TASKS - 1] as { dependsOn: string[] };
      last.dependsOn[MAX_DEPENDENCIES - 1] = 'ghost';
    },
    `task "t${MAX_TASKS - 1}" depends on "ghost", which is not a task of spec.tasks`,
  ],
  [
    'a task depending on itself',
    (o) => {
      tasksOf(o)[0] = { ...tasksOf(o)[0], dependsOn: ['plan'] };
    },
    'spec.tasks[0].dependsOn: Invalid value: "object": a task cannot depend on itself',
  ],
  [
    'a duplicate dependency',
    (o) => {
      tasksOf(o)[2] = { ...tasksOf(o)[2], dependsOn: ['research', 'research'] };
    },
    'spec.tasks[2].dependsOn[1]: Duplicate value: "research"',
  ],
  [
    'an upper-case task name',
    (o) => {
      tasksOf(o)[0] = { ...tasksOf(o)[0], name: 'Plan' };
    },
    'spec.tasks[0].name: Invalid value: "Plan": spec.tasks[0].name in body should match',
  ],
  [
    'a 64-character task name',
    (o) => {
      tasksOf(o)[0] = { ...tasksOf(o)[0], name: 'p'.repeat(64) };
    },
    'spec.tasks[0].name: Too long: may not be more than 63 bytes',
  ],
  [
    'a task without a handler',
    (o) => {
      delete tasksOf(o)[0]?.handler;
    },
    'spec.tasks[0].handler: Required value',
  ],
  [
    'parallelism 0',
    (o) => {
      o.spec.parallelism = 0;
    },
    'spec.parallelism: Invalid value: 0: spec.parallelism in body should be greater than or equal to 1',
  ],
  [
    'a workflow timeout of 0',
    (o) => {
      o.spec.timeoutSeconds = 0;
    },
    'spec.timeoutSeconds: Invalid value: 0',
  ],
  [
    'a negative task timeout',
    (o) => {
      tasksOf(o)[1] = { ...tasksOf(o)[1], timeoutSeconds: -5 };
    },
    'spec.tasks[1].timeoutSeconds: Invalid value: -5',
  ],
  [
    'maxAttempts 0',
    (o) => {
      o.spec.retryPolicy = { maxAttempts: 0 };
    },
    'spec.retryPolicy.maxAttempts: Invalid value: 0',
  ],
  [
    'a back-off that starts above its cap',
    (o) => {
      o.spec.retryPolicy = { backoff: { initialSeconds: 60, maxSeconds: 10 } };
    },
    'spec.retryPolicy.backoff.initialSeconds: Invalid value: "object": initialSeconds must be less than or equal to maxSeconds',
  ],
  [
    'a zero initial back-off',
    (o) => {
      o.spec.retryPolicy = { backoff: { initialSeconds: 0 } };
    },
    'spec.retryPolicy.backoff.initialSeconds: Invalid value: 0: spec.retryPolicy.backoff.initialSeconds in body should be greater than 0',
  ],
  [
    'no pool for a task',
    (o) => {
      delete o.spec.pool;
    },
    'spec.pool: Required value: spec.pool is required unless every task sets pool',
  ],
  [
    'an invalid pool name',
    (o) => {
      o.spec.pool = 'Research_Pool';
    },
    'spec.pool: Invalid value: "Research_Pool"',
  ],
  [
    'a pool reference of three parts',
    (o) => {
      o.spec.pool = 'a/b/c';
    },
    'spec.pool: Invalid value: "a/b/c"',
  ],
  [
    'a task pool in an upper-case namespace',
    (o) => {
      tasksOf(o)[0] = { ...tasksOf(o)[0], pool: 'A/b' };
    },
    'spec.tasks[0].pool: Invalid value: "A/b"',
  ],
  [
    'a pool reference over 127 characters',
    (o) => {
      o.spec.pool = `${'n'.repeat(64)}/${'p'.repeat(63)}`;
    },
    'spec.pool: Too long: may not be more than 127 bytes',
  ],
  [
    'a task cost of 0',
    (o) => {
      tasksOf(o)[0] = { ...tasksOf(o)[0], cost: 0 };
    },
    'spec.tasks[0].cost: Invalid value: 0',
  ],
  [
    'an oversized forEach expression',
    (o) => {
      tasksOf(o)[1] = { ...tasksOf(o)[1], forEach: `inputs.x${' '.repeat(3000)}` };
    },
    'spec.tasks[1].forEach: Too long: may not be more than 2048 bytes',
  ],
  [
    'too many tasks',
    (o) => {
      o.spec.tasks = Array.from({ length: 201 }, (_, i) => ({ name: `t${i}`, handler: 'h' }));
    },
    'spec.tasks: Too many: 201: must have at most 200 items',
  ],
  [
    'a priority out of range',
    (o) => {
      o.spec.priority = 5000;
    },
    'spec.priority: Invalid value: 5000: spec.priority in body should be less than or equal to 1000',
  ],
  [
    'inputs that are not an object',
    (o) => {
      o.spec.inputs = ['a', 'b'];
    },
    'spec.inputs: Invalid value: "array": spec.inputs in body must be of type object',
  ],
  [
    'a negative ttl',
    (o) => {
      o.spec.ttlSecondsAfterFinished = -1;
    },
    'spec.ttlSecondsAfterFinished: Invalid value: -1',
  ],
  // Not 'yes': kubectl reads YAML 1.1, where yes is a boolean.
  [
    'suspend as a string',
    (o) => {
      o.spec.suspend = 'sometimes';
    },
    'spec.suspend: Invalid value: "string": spec.suspend in body must be of type boolean',
  ],
  [
    'a budget with neither maxTokens nor maxCostUsd',
    (o) => {
      o.spec.budget = { action: 'Suspend' };
    },
    'spec.budget.maxTokens: Required value: spec.budget needs maxTokens or maxCostUsd (or both)',
  ],
  [
    'a budget of 0 tokens',
    (o) => {
      o.spec.budget = { maxTokens: 0 };
    },
    'spec.budget.maxTokens: Invalid value: 0: spec.budget.maxTokens in body should be greater than or equal to 1',
  ],
  [
    'a budget of a fraction of a token',
    (o) => {
      o.spec.budget = { maxTokens: 1.5 };
    },
    'spec.budget.maxTokens: Invalid value: "number": spec.budget.maxTokens in body must be of type integer',
  ],
  [
    'a budget of $0',
    (o) => {
      o.spec.budget = { maxCostUsd: 0 };
    },
    'spec.budget.maxCostUsd: Invalid value: 0: spec.budget.maxCostUsd in body should be greater than 0',
  ],
  [
    'a budget action that is not Fail or Suspend',
    (o) => {
      o.spec.budget = { maxTokens: 10, action: 'Warn' };
    },
    'spec.budget.action: Unsupported value: "Warn": supported values: "Fail", "Suspend"',
  ],
  [
    'a task with neither handler nor approval',
    (o) => {
      tasksOf(o)[0] = { name: tasksOf(o)[0]?.name };
    },
    'spec.tasks[0].handler: Required value: a task needs exactly one of handler (an agent runs it) and approval (a person decides)',
  ],
  [
    'a task with both handler and approval',
    (o) => {
      tasksOf(o)[0] = { ...tasksOf(o)[0], approval: { message: 'ok?' } };
    },
    'a task needs exactly one of handler (an agent runs it) and approval (a person decides)',
  ],
  [
    'an approval task with a forEach',
    (o) => {
      tasksOf(o)[0] = { name: tasksOf(o)[0]?.name, approval: {}, forEach: '[1, 2]' };
    },
    'spec.tasks[0].approval: Invalid value: "object": an approval task takes no forEach, retryPolicy, timeoutSeconds or memoize',
  ],
  [
    'an approval onTimeout that is not Reject or Approve',
    (o) => {
      tasksOf(o)[0] = { name: tasksOf(o)[0]?.name, approval: { timeoutSeconds: 60, onTimeout: 'Escalate' } };
    },
    'spec.tasks[0].approval.onTimeout: Unsupported value: "Escalate": supported values: "Reject", "Approve"',
  ],
  [
    'an approval message over 1024 characters',
    (o) => {
      tasksOf(o)[0] = { name: tasksOf(o)[0]?.name, approval: { message: 'm'.repeat(1025) } };
    },
    'spec.tasks[0].approval.message: Too long: may not be more than 1024 bytes',
  ],
  [
    'a concurrency max of 0',
    (o) => {
      tasksOf(o)[0] = { ...tasksOf(o)[0], concurrency: { key: "'k'", max: 0 } };
    },
    'spec.tasks[0].concurrency.max: Invalid value: 0: spec.tasks[0].concurrency.max in body should be greater than or equal to 1',
  ],
  [
    'a concurrency without a key',
    (o) => {
      tasksOf(o)[0] = { ...tasksOf(o)[0], concurrency: { max: 1 } };
    },
    'spec.tasks[0].concurrency.key: Required value',
  ],
  [
    'a rate limit named with capitals',
    (o) => {
      tasksOf(o)[0] = { ...tasksOf(o)[0], rateLimits: [{ name: 'OpenAI' }] };
    },
    'spec.tasks[0].rateLimits[0].name: Invalid value: "OpenAI"',
  ],
  [
    'more than 8 rate limits on a task',
    (o) => {
      tasksOf(o)[0] = {
        ...tasksOf(o)[0],
        rateLimits: Array.from({ length: 9 }, (_, i) => ({ name: `l${i}` })),
      };
    },
    'spec.tasks[0].rateLimits: Too many: 9: must have at most 8 items',
  ],
  [
    'both tasks and a workflowTemplateRef',
    (o) => {
      o.spec.workflowTemplateRef = { name: 'research' };
    },
    'spec.tasks: Required value: spec needs exactly one of tasks and workflowTemplateRef',
  ],
  [
    'neither tasks nor a workflowTemplateRef',
    (o) => {
      delete o.spec.tasks;
    },
    'spec.tasks: Required value: spec needs exactly one of tasks and workflowTemplateRef',
  ],
  [
    'a workflowTemplateRef that is no object name',
    (o) => {
      delete o.spec.tasks;
      o.spec.workflowTemplateRef = { name: 'Research_Report' };
    },
    'spec.workflowTemplateRef.name: Invalid value: "Research_Report"',
  ],
];

const templateCases: [string, Mutate, string][] = [
  [
    'a parameter name that is no identifier',
    (o) => {
      o.spec.parameters[0].name = 'the-topic';
    },
    'spec.parameters[0].name: Invalid value: "the-topic"',
  ],
  [
    'a parameter of an unknown type',
    (o) => {
      o.spec.parameters[0].type = 'text';
    },
    'spec.parameters[0].type: Unsupported value: "text"',
  ],
  [
    'two parameters of one name',
    (o) => {
      o.spec.parameters[1].name = 'topic';
    },
    'spec.parameters[1]: Duplicate value: {"name":"topic"}',
  ],
  [
    'more than 64 parameters',
    (o) => {
      o.spec.parameters = Array.from({ length: 65 }, (_, i) => ({ name: `p${i}` }));
    },
    'spec.parameters: Too many: 65: must have at most 64 items',
  ],
  [
    'no tasks',
    (o) => {
      delete o.spec.tasks;
    },
    'spec.tasks: Required value',
  ],
  [
    'a dependency on no task',
    (o) => {
      o.spec.tasks[2].dependsOn = ['nothing'];
    },
    'spec.tasks: Invalid value: "object": task "write" depends on "nothing", which is not a task of spec.tasks',
  ],
  [
    'no pool for a task',
    (o) => {
      delete o.spec.pool;
    },
    'spec.pool: Required value: spec.pool is required unless every task sets pool',
  ],
];

const exampleCron: Obj = {
  apiVersion: 'agentflow.io/v1alpha1',
  kind: 'CronWorkflow',
  metadata: { name: 'nightly-report' },
  spec: {
    schedule: '0 3 * * *',
    timeZone: 'Europe/Paris',
    workflowSpec: { workflowTemplateRef: { name: 'research' }, inputs: { topic: 'etcd' } },
  },
};

const cronCases: [string, Mutate, string][] = [
  [
    'a name too long for its runs',
    (o) => {
      o.metadata.name = 'c'.repeat(53);
    },
    'metadata.name must be at most 52 characters (its runs add -<unix time>)',
  ],
  [
    'a schedule of four fields',
    (o) => {
      o.spec.schedule = '0 3 * *';
    },
    'spec.schedule: Invalid value: "0 3 * *": spec.schedule in body should match',
  ],
  [
    'an @every schedule',
    (o) => {
      o.spec.schedule = '@every 5m';
    },
    'spec.schedule: Invalid value: "@every 5m"',
  ],
  [
    'an unknown concurrencyPolicy',
    (o) => {
      o.spec.concurrencyPolicy = 'Queue';
    },
    'spec.concurrencyPolicy: Unsupported value: "Queue": supported values: "Allow", "Forbid", "Replace"',
  ],
  [
    'a negative startingDeadlineSeconds',
    (o) => {
      o.spec.startingDeadlineSeconds = -1;
    },
    'spec.startingDeadlineSeconds: Invalid value: -1',
  ],
  [
    'a workflowSpec with tasks and a template',
    (o) => {
      o.spec.workflowSpec.tasks = [{ name: 'a', handler: 'h' }];
    },
    'spec.workflowSpec.tasks: Required value: spec needs exactly one of tasks and workflowTemplateRef',
  ],
  [
    'no workflowSpec',
    (o) => {
      delete o.spec.workflowSpec;
    },
    'spec.workflowSpec: Required value',
  ],
];

describe('kubectl refuses invalid CronWorkflows, naming the field', () => {
  it.each(cronCases)('%s', async (_what, mutate, expected) => {
    const o = clone(exampleCron);
    mutate(o);
    const r = await dryRun(o);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(expected);
  });

  it('fills the defaults of a CronWorkflow and shows its columns', async () => {
    const r = await cluster.kubectl(['apply', '-n', ns, '-f', '-'], { input: stringify(exampleCron) });
    expect(r.stderr).toBe('');
    const c = JSON.parse((await cluster.kubectl(['get', 'acwf', 'nightly-report', '-n', ns, '-o', 'json'])).stdout);
    expect(c.spec).toMatchObject({
      concurrencyPolicy: 'Allow',
      suspend: false,
      successfulJobsHistoryLimit: 3,
      failedJobsHistoryLimit: 1,
    });
    const table = await cluster.kubectl(['get', 'cronworkflows', '-n', ns]);
    expect(table.stdout.split('\n')[0]?.split(/\s{2,}/)).toEqual([
      'NAME',
      'SCHEDULE',
      'TIMEZONE',
      'SUSPEND',
      'LAST SCHEDULE',
      'AGE',
    ]);
    await cluster.kubectl(['delete', 'acwf', 'nightly-report', '-n', ns]);
  });
});

describe('kubectl refuses invalid WorkflowTemplates, naming the field', () => {
  it.each(templateCases)('%s', async (_what, mutate, expected) => {
    const o = clone(exampleTemplate);
    mutate(o);
    const r = await dryRun(o);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(expected);
  });
});

describe('kubectl refuses invalid AgentPools, naming the field', () => {
  it.each(poolCases)('%s', async (_what, mutate, expected) => {
    const o = clone(examplePool);
    mutate(o);
    const r = await dryRun(o);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(expected);
  });
});

describe('kubectl refuses invalid Workflows, naming the field', () => {
  it.each(workflowCases)('%s', async (_what, mutate, expected) => {
    const o = clone(exampleWorkflow);
    mutate(o);
    const r = await dryRun(o);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(expected);
  });

  it('has at least 25 invalid manifests in the table', () => {
    expect(poolCases.length + workflowCases.length).toBeGreaterThanOrEqual(25);
  });
});

describe('valid manifests', () => {
  it('accepts the examples in a server-side dry run', async () => {
    const r = await cluster.kubectl(['apply', '--dry-run=server', '-n', ns, '-f', 'deploy/examples/']);
    expect(r.stderr).toBe('');
    expect(r.stdout).toContain('agentpool.agentflow.io/researchers created (server dry run)');
    expect(r.stdout).toContain('workflow.agentflow.io/research-report created (server dry run)');
    expect(r.stdout).toContain('workflowtemplate.agentflow.io/research created (server dry run)');
  });

  it('accepts a Workflow that names a template and sets only inputs and overrides', async () => {
    const r = await dryRun({
      apiVersion: 'agentflow.io/v1alpha1',
      kind: 'Workflow',
      metadata: { name: 'from-template' },
      spec: { workflowTemplateRef: { name: 'research' }, inputs: { topic: 'etcd' }, priority: 7 },
    });
    expect(r.stderr).toBe('');
    expect(r.stdout).toContain('workflow.agentflow.io/from-template created (server dry run)');
  });

  it('accepts a template with the most tasks and dependencies (its rules stay within their cost budget)', async () => {
    const o = clone(exampleTemplate);
    o.spec.parameters = Array.from({ length: 64 }, (_, i) => ({ name: `p${i}`, enum: ['a', 'b'] }));
    o.spec.tasks = Array.from({ length: MAX_TASKS }, (_, i) => ({
      name: `t${i}`,
      handler: 'h',
      ...(i > 0 && { dependsOn: Array.from({ length: Math.min(i, MAX_DEPENDENCIES) }, (_, j) => `t${i - 1 - j}`) }),
    }));
    const r = await dryRun(o);
    expect(r.stderr).toBe('');
    expect(r.stdout).toContain('created (server dry run)');
  });

  it('accepts the most tasks with the most dependencies (the dependsOn rule stays within its cost budget)', async () => {
    const o = clone(exampleWorkflow);
    o.spec.tasks = Array.from({ length: MAX_TASKS }, (_, i) => ({
      name: `t${i}`,
      handler: 'h',
      ...(i > 0 && { dependsOn: Array.from({ length: Math.min(i, MAX_DEPENDENCIES) }, (_, j) => `t${i - 1 - j}`) }),
    }));
    const r = await dryRun(o);
    expect(r.stderr).toBe('');
    expect(r.stdout).toContain('created (server dry run)');
  });

  it('accepts a pool shared with other namespaces and workflows naming pools as namespace/name, filling weights', async () => {
    const pool = clone(examplePool);
    pool.spec.sharing = { namespaces: [{ name: 'team-a', weight: 3 }, { name: 'team-b' }] };
    const p = await cluster.kubectl(['apply', '--dry-run=server', '-n', ns, '-o', 'json', '-f', '-'], {
      input: stringify(pool),
    });
    expect(p.stderr).toBe('');
    expect(JSON.parse(p.stdout).spec.sharing).toEqual({
      weight: 1,
      namespaces: [
        { name: 'team-a', weight: 3 },
        { name: 'team-b', weight: 1 },
      ],
    });
    const wf = clone(exampleWorkflow);
    wf.spec.pool = 'shared/researchers';
    tasksOf(wf)[0] = { ...tasksOf(wf)[0], pool: `${'n'.repeat(63)}/${'p'.repeat(63)}` };
    const w = await dryRun(wf);
    expect(w.stderr).toBe('');
    expect(w.stdout).toContain('created (server dry run)');
  });

  it('fills defaults, shows printer columns and answers to short names and the agentflow category', async () => {
    const r = await cluster.kubectl(['apply', '-n', ns, '-f', 'deploy/examples/']);
    expect(r.code).toBe(0);
    const pool = JSON.parse((await cluster.kubectl(['get', 'ap', 'researchers', '-n', ns, '-o', 'json'])).stdout);
    expect(pool.spec.placement.scheduler).toBe('agentflow');
    expect(pool.spec.state).toBeUndefined();
    const wf = JSON.parse((await cluster.kubectl(['get', 'awf', 'research-report', '-n', ns, '-o', 'json'])).stdout);
    // spec.priority has no schema default: a Workflow that runs a template takes the template's.
    expect(wf.spec.priority).toBeUndefined();
    expect(wf.spec.tasks[0].cost).toBe(1);
    expect(wf.spec.retryPolicy.maxAttempts).toBe(3);

    const pools = await cluster.kubectl(['get', 'agentpools', '-n', ns]);
    expect(pools.stdout.split('\n')[0]?.split(/\s+/)).toEqual([
      'NAME',
      'READY',
      'AGENTS',
      'SLOTS',
      'INFLIGHT',
      'QUEUED',
      'AGE',
    ]);
    const wfs = await cluster.kubectl(['get', 'workflows', '-n', ns, '-o', 'wide']);
    expect(wfs.stdout.split('\n')[0]?.split(/\s+/)).toEqual(['NAME', 'PHASE', 'PROGRESS', 'POOL', 'AGE', 'MESSAGE']);
    const all = await cluster.kubectl(['get', 'agentflow', '-n', ns, '-o', 'name']);
    expect(all.stdout.trim().split('\n').sort()).toEqual([
      'agentpool.agentflow.io/researchers',
      'workflow.agentflow.io/research-report',
      'workflow.agentflow.io/review-notes',
      'workflowtemplate.agentflow.io/research',
    ]);
    const templates = await cluster.kubectl(['get', 'awft', '-n', ns]);
    expect(templates.stdout.split('\n')[0]?.split(/\s+/)).toEqual(['NAME', 'POOL', 'AGE']);
    expect(templates.stdout.split('\n')[1]?.split(/\s+/).slice(0, 2)).toEqual(['research', 'researchers']);
  });

  it('scales an AgentPool through the scale subresource (kubectl scale)', async () => {
    const r = await cluster.kubectl(['scale', 'ap/researchers', '-n', ns, '--replicas=5']);
    expect(r.stdout).toContain('agentpool.agentflow.io/researchers scaled');
    const pool = JSON.parse((await cluster.kubectl(['get', 'ap', 'researchers', '-n', ns, '-o', 'json'])).stdout);
    expect(pool.spec.replicas).toBe(5);
    const scale = await cluster.client.get<{ kind: string; spec: { replicas: number } }>(
      `/apis/agentflow.io/v1alpha1/namespaces/${ns}/agentpools/researchers/scale`,
    );
    expect(scale).toMatchObject({ kind: 'Scale', spec: { replicas: 5 } });
  });

  it('keeps status out of spec writes (status subresource)', async () => {
    await cluster.client.mergePatch(`/apis/agentflow.io/v1alpha1/namespaces/${ns}/workflows/research-report`, {
      status: { phase: 'Succeeded' },
    });
    const wf = await cluster.client.get<{ status?: { phase?: string } }>(
      `/apis/agentflow.io/v1alpha1/namespaces/${ns}/workflows/research-report`,
    );
    expect(wf.status?.phase).toBeUndefined();
    await cluster.client.mergePatch(`/apis/agentflow.io/v1alpha1/namespaces/${ns}/workflows/research-report/status`, {
      status: { phase: 'Running', progressSummary: '1/5' },
    });
    const row = await cluster.kubectl(['get', 'awf', 'research-report', '-n', ns, '--no-headers']);
    expect(row.stdout.split(/\s+/).slice(0, 4)).toEqual(['research-report', 'Running', '1/5', 'researchers']);
  });
});
