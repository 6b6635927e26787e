import { type Static, Type } from '@sinclair/typebox';
import {
  type CelRule,
  Conditions,
  DnsLabel,
  FreeObject,
  FreeValue,
  ObjectMeta,
  StringEnum,
  StringMap,
} from './schema-helpers.ts';
import { PoolRef } from './sharing.ts';

// Workflow: a DAG of tasks for the agents of one or more pools. Task inputs
// are literal JSON; a string of the form `${{ expr }}` is replaced by the value
// of the CEL expression, and `${{ }}` inside a longer string interpolates.

export const MAX_TASKS = 200;
export const MAX_DEPENDENCIES = 64;
export const MAX_EXPRESSION = 2048;

// Bounds on the work one workflow can make the operator leader do (issue 13:
// "bounded work"). Each has one definition here, read by validation, the
// engine, the operator's flags, the CRD descriptions and the docs.

/**
 * Cost budget of one evaluation of one CEL expression, in cost units (about one
 * evaluation step each: see the cost model in src/api/expressions.ts). Like the
 * Kubernetes API server's per-expression limit (PerCallLimit, 1,000,000 of
 * cel-go's units), at half the figure because a unit of @bufbuild/cel takes
 * longer (~35 ns): spending the budget holds the leader's event loop ~20-40 ms.
 */
export const MAX_EXPRESSION_COST = 500_000;
/**
 * Cost budget of all the expressions evaluated to start one task: its `when`, its
 * `forEach` and its input for every forEach item (ten times one expression's, as
 * the API server's RuntimeCELCostBudget is for one request).
 */
export const MAX_TASK_EXPRESSION_COST = 5_000_000;
/** Default of the operator's --max-foreach-items: the most items a forEach list may yield. */
export const DEFAULT_MAX_FOREACH_ITEMS = 10_000;
/**
 * Default of the operator's --max-spawned-children: the most children one task of
 * the spec (or one forEach item) may spawn, its children's children included.
 */
export const DEFAULT_MAX_SPAWNED_CHILDREN = 1_000;

// Defaults of the spec, each defined once: the schema fills them in (and says
// them in its descriptions, which kubectl explain prints: it does not print
// `default:`), and the engine reads them for specs the API server did not
// default (a retryPolicy absent altogether, a spec from a unit test or etcd).

/** The retry policy of a task when neither it nor spec.retryPolicy sets a field. */
export const DEFAULT_RETRY = { maxAttempts: 3, initialSeconds: 1, factor: 2, maxSeconds: 300 } as const;
/** Task slots an attempt occupies unless the task says otherwise. */
export const DEFAULT_TASK_COST = 1;
/** A workflow's priority unless it says otherwise. */
export const DEFAULT_PRIORITY = 0;

const RetryPolicy = Type.Object(
  {
    maxAttempts: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 100,
        default: DEFAULT_RETRY.maxAttempts,
        description: `Attempts in all, the first included (1: no retry). Default: ${DEFAULT_RETRY.maxAttempts}.`,
      }),
    ),
    backoff: Type.Optional(
      Type.Object(
        {
          initialSeconds: Type.Optional(
            Type.Number({
              exclusiveMinimum: 0,
              maximum: 3600,
              default: DEFAULT_RETRY.initialSeconds,
              description: `Delay before the second attempt, in seconds. Default: ${DEFAULT_RETRY.initialSeconds}.`,
            }),
          ),
          factor: Type.Optional(
            Type.Number({
              minimum: 1,
              maximum: 10,
              default: DEFAULT_RETRY.factor,
              description: `Growth of the delay per attempt (each delay is the previous one times factor). Default: ${DEFAULT_RETRY.factor}.`,
            }),
          ),
          maxSeconds: Type.Optional(
            Type.Number({
              exclusiveMinimum: 0,
              maximum: 86_400,
              default: DEFAULT_RETRY.maxSeconds,
              description: `Upper bound of any delay, in seconds. Default: ${DEFAULT_RETRY.maxSeconds}.`,
            }),
          ),
        },
        {
          description: 'Exponential back-off between attempts.',
          'x-kubernetes-validations': [
            {
              rule: '!has(self.initialSeconds) || !has(self.maxSeconds) || self.initialSeconds <= self.maxSeconds',
              message: 'initialSeconds must be less than or equal to maxSeconds',
              fieldPath: '.initialSeconds',
            },
          ],
        },
      ),
    ),
  },
  {
    description:
      "How failed attempts are retried: those that time out or whose handler reports a retryable error. A task's retryPolicy replaces spec.retryPolicy as a whole.",
  },
);

/** What an approval task does when no decision came within its timeoutSeconds. */
export const APPROVAL_TIMEOUT_ACTIONS = ['Reject', 'Approve'] as const;
export type ApprovalTimeoutAction = (typeof APPROVAL_TIMEOUT_ACTIONS)[number];
export const DEFAULT_APPROVAL_ON_TIMEOUT: ApprovalTimeoutAction = 'Reject';
/** A person's decision on an approval task (`agentflow approve|reject`). */
export const APPROVAL_DECISIONS = ['Approve', 'Reject'] as const;
export type ApprovalDecision = (typeof APPROVAL_DECISIONS)[number];
/** Longest approval message and decision message (the status shows them). */
export const MAX_APPROVAL_MESSAGE = 1024;
/** Most users and most groups an approval's approvers may list. */
export const MAX_APPROVERS = 64;

const Approvers = (what: string) =>
  Type.Unsafe<string[]>({
    type: 'array',
    maxItems: MAX_APPROVERS,
    'x-kubernetes-list-type': 'set',
    items: { type: 'string', minLength: 1, maxLength: 253 },
    description: what,
  });

const Approval = Type.Object(
  {
    message: Type.Optional(
      Type.String({
        maxLength: MAX_APPROVAL_MESSAGE,
        description:
          'What the people who may approve are asked, shown by `agentflow get`, `describe` and the UI. ${{ CEL }} expressions see inputs and tasks.<dependency>.output.',
      }),
    ),
    timeoutSeconds: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 2_592_000,
        description: 'How long to wait for a decision, in seconds. Default: no limit.',
      }),
    ),
    onTimeout: Type.Optional(
      StringEnum(APPROVAL_TIMEOUT_ACTIONS, {
        default: DEFAULT_APPROVAL_ON_TIMEOUT,
        description: `What happens when timeoutSeconds pass without a decision: Reject fails the task, Approve lets the workflow go on. Default: ${DEFAULT_APPROVAL_ON_TIMEOUT}.`,
      }),
    ),
    approvers: Type.Optional(
      Type.Object(
        {
          users: Type.Optional(Approvers('User names that may decide.')),
          groups: Type.Optional(Approvers('Groups whose members may decide.')),
        },
        {
          description:
            'Who may decide, on top of RBAC (`update` on the workflows/approval subresource of data.agentflow.io): when set, the user must be listed or be in a listed group.',
        },
      ),
    ),
  },
  {
    description:
      "Makes the task a human approval step instead of a handler: it waits, holding no agent slot, until someone runs `agentflow approve|reject` (or the UI), and succeeds with output {approved, user, message, decidedAt} or fails with the reviewer's message.",
  },
);

const Expression = (description: string) =>
  Type.String({
    minLength: 1,
    maxLength: MAX_EXPRESSION,
    description: `${description} One evaluation may cost at most ${MAX_EXPRESSION_COST} CEL cost units.`,
  });

/** Longest value a concurrency or rate-limit key may evaluate to. */
export const MAX_LIMIT_KEY_LENGTH = 253;
/** Most attempts one concurrency key may let run at once. */
export const MAX_CONCURRENCY = 10_000;
/** Most rate limits one task may take a token of. */
export const MAX_TASK_RATE_LIMITS = 8;

const KEY_VARIABLES = `It sees inputs, tasks.<dependency>.output, input (the task's rendered input) and index (of a forEach item), and must yield a string of 1 to ${MAX_LIMIT_KEY_LENGTH} characters, else the task fails.`;

const Concurrency = Type.Object(
  {
    key: Expression(
      `CEL expression yielding the concurrency key, e.g. "'customer-' + inputs.customer". ${KEY_VARIABLES}`,
    ),
    max: Type.Integer({
      minimum: 1,
      maximum: MAX_CONCURRENCY,
      description: 'Most attempts of tasks with this key that run at once.',
    }),
  },
  {
    description:
      'Caps the attempts that run at once for one key across every workflow of the namespace (e.g. one run per customer at a time): an attempt over it waits in the dispatcher, holding no slot, and its status message says so ("waiting on concurrency key customer-acme (2 of 2 running)").',
  },
);

/** Longest value a memoization key may evaluate to. */
export const MAX_MEMO_KEY_LENGTH = 1024;
/** The longest maxAgeSeconds of a memoized output (a year). */
export const MAX_MEMO_AGE_SECONDS = 31_536_000;

const Memoize = Type.Object(
  {
    key: Type.Optional(
      Expression(
        `CEL expression yielding the cache key, e.g. "'summary-' + inputs.url". Default: the task's handler and its rendered input. It sees inputs, tasks.<dependency>.output, input and index, and must yield a string of 1 to ${MAX_MEMO_KEY_LENGTH} characters, else the task fails.`,
      ),
    ),
    maxAgeSeconds: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: MAX_MEMO_AGE_SECONDS,
        description: 'Use an output only this many seconds after it was cached. Default: any age.',
      }),
    ),
  },
  {
    description:
      "Reuse an earlier output: a task whose key has an output in the namespace's cache (no older than maxAgeSeconds) is not dispatched; it succeeds at once with that output, marked memoized in its status and the audit log. A successful attempt's output is cached under its key (outputs over 256 KiB are not; the namespace keeps at most 1,000 entries and 16 MiB, the oldest evicted first). `agentflow cache list|clear` shows and clears the cache.",
  },
);

const TaskRateLimit = Type.Object(
  {
    name: DnsLabel("Name of a rate limit the task's AgentPool declares in spec.rateLimits."),
    key: Type.Optional(
      Expression(
        `CEL expression yielding the key the limit is counted per (e.g. "inputs.tenant": model calls per tenant); without it, one bucket for the pool. ${KEY_VARIABLES}`,
      ),
    ),
  },
  { description: 'One rate limit each attempt takes a token of before it starts.' },
);

export const WorkflowTask = Type.Object(
  {
    name: DnsLabel('Task name, unique in the workflow.'),
    handler: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: 253,
        pattern: '^[A-Za-z0-9][A-Za-z0-9_.:/-]*$',
        description: 'Handler an agent of the pool runs for this task (required unless the task is an approval).',
      }),
    ),
    approval: Type.Optional(Approval),
    pool: Type.Optional(PoolRef('AgentPool that runs the task (default: spec.pool).')),
    dependsOn: Type.Optional(
      Type.Unsafe<string[]>({
        type: 'array',
        maxItems: MAX_DEPENDENCIES,
        'x-kubernetes-list-type': 'set',
        items: { type: 'string', maxLength: 63 },
        description: 'Tasks that must succeed before this one starts.',
      }),
    ),
    input: Type.Optional(
      StringMap(FreeValue('A literal JSON value, or a string with ${{ CEL }} expressions.'), {
        description: 'Input handed to the handler. Expressions see inputs, tasks.<dependency>.output and item.',
        maxProperties: 64,
      }),
    ),
    forEach: Type.Optional(
      Expression(
        `CEL expression yielding a list: one task instance per item (fan-out); at most ${DEFAULT_MAX_FOREACH_ITEMS} items unless the operator's --max-foreach-items says otherwise.`,
      ),
    ),
    when: Type.Optional(Expression('CEL condition: the task is skipped when it is false.')),
    retryPolicy: Type.Optional(RetryPolicy),
    timeoutSeconds: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 604_800,
        description: 'Deadline of one attempt, in seconds. Default: none (no deadline).',
      }),
    ),
    cost: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 1024,
        default: DEFAULT_TASK_COST,
        description: `Task slots an attempt occupies. Default: ${DEFAULT_TASK_COST}.`,
      }),
    ),
    concurrency: Type.Optional(Concurrency),
    memoize: Type.Optional(Memoize),
    rateLimits: Type.Optional(
      Type.Array(TaskRateLimit, {
        maxItems: MAX_TASK_RATE_LIMITS,
        'x-kubernetes-list-type': 'map',
        'x-kubernetes-list-map-keys': ['name'],
        description:
          'Rate limits of the AgentPool each attempt takes a token of before it starts; an attempt without one waits, holding no slot, and its status message says for how long ("waiting on rate limit openai-calls (key acme): next slot in 3.2 s"). A limit the pool does not declare holds the task until it does.',
      }),
    ),
  },
  {
    'x-kubernetes-validations': [
      {
        rule: '!has(self.dependsOn) || !(self.name in self.dependsOn)',
        message: 'a task cannot depend on itself',
        fieldPath: '.dependsOn',
      },
      {
        rule: 'has(self.handler) != has(self.approval)',
        message: 'a task needs exactly one of handler (an agent runs it) and approval (a person decides)',
        fieldPath: '.handler',
        reason: 'FieldValueRequired',
      },
      {
        // input too, but CEL cannot see a field of free values: the controller's validation refuses it.
        rule: '!has(self.approval) || !(has(self.forEach) || has(self.retryPolicy) || has(self.timeoutSeconds) || has(self.memoize))',
        message:
          'an approval task takes no forEach, retryPolicy, timeoutSeconds or memoize (use approval.timeoutSeconds)',
        fieldPath: '.approval',
      },
    ],
  },
);

/**
 * Tasks one dependsOn rule checks. sets.contains costs the product of its lists'
 * sizes at run time, so checking every task in one rule costs up to MAX_TASKS x
 * MAX_TASKS x MAX_DEPENDENCIES = 2.56M, over the API server's limit of 1M for
 * one expression (PerCallLimit): it refused valid workflows near the maxima. A
 * rule per 40 tasks costs at most 40 x 200 x 64 = 512,000, the five together
 * 2.56M of the request's 10M (RuntimeCELCostBudget).
 */
const TASKS_PER_DEPENDS_ON_RULE = 40;

/**
 * The rules that every dependsOn entry names a task, one per slice of spec.tasks.
 * Each refusal names the slice's first unknown entry: `task "b" depends on
 * "nope", which is not a task of spec.tasks`. The message expressions are
 * written for the API server's cost estimate:
 * - its CEL has no cel.bind: `[x].map(v, ...)[0]` binds v to x, computed once;
 * - it knows a string's size only when the string is read through a path of
 *   self (the schema's maxLength): an element of a computed list, or
 *   string(int), counts as unbounded, and concatenating one is refused as over
 *   budget. So the task and entry are found by index (indexOf) and read as
 *   self.tasks[i].name and self.tasks[i].dependsOn[j];
 * - only libraries of Kubernetes 1.29 (sets, lists), as the chart supports 1.30
 *   (a map of names built by transformMapEntry would need 1.33).
 */
function dependsOnRules(): CelRule[] {
  const rules: CelRule[] = [];
  for (let first = 0; first < MAX_TASKS; first += TASKS_PER_DEPENDS_ON_RULE) {
    const count = Math.min(TASKS_PER_DEPENDS_ON_RULE, MAX_TASKS - first);
    const slice = `[${Array.from({ length: count }, (_, k) => first + k).join(', ')}]`;
    const names = '[self.tasks.map(t, t.name)]';
    const unknown = 'has(self.tasks[i].dependsOn) && !sets.contains(names, self.tasks[i].dependsOn)';
    rules.push({
      rule: `self.tasks.size() <= ${first} || ${names}.all(names, ${slice}.all(i, i >= self.tasks.size() || !(${unknown})))`,
      messageExpression: [
        `${names}.map(names,`,
        `[${slice}.map(i, i < self.tasks.size() && ${unknown})].map(bad,`,
        `[${first} + bad.indexOf(true)].map(i,`,
        '[self.tasks[i].dependsOn.map(d, d in names)].map(known,',
        `'task "' + self.tasks[i].name + '" depends on "' + self.tasks[i].dependsOn[known.indexOf(false)] +`,
        `'", which is not a task of spec.tasks' +`,
        `(bad.lastIndexOf(true) != i - ${first} || known.lastIndexOf(false) != known.indexOf(false)`,
        `? '; other dependsOn entries name no task either' : '')`,
        ')[0])[0])[0])[0]',
      ].join(' '),
      // What the API server says if the message expression fails.
      message: 'every dependsOn entry must name a task of spec.tasks',
      fieldPath: '.tasks',
    });
  }
  return rules;
}

/** What spec.budget does once the workflow's usage passes it. */
export const BUDGET_ACTIONS = ['Fail', 'Suspend'] as const;
export type BudgetAction = (typeof BUDGET_ACTIONS)[number];
export const DEFAULT_BUDGET_ACTION: BudgetAction = 'Fail';
/** Models status.usage.byModel lists (the costliest; the rest are in the totals). */
export const MAX_STATUS_USAGE_MODELS = 16;

const Budget = Type.Object(
  {
    maxTokens: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: Number.MAX_SAFE_INTEGER,
        description:
          'Most tokens (input plus output, every model) the workflow may use, as its handlers report them with ctx.usage.',
      }),
    ),
    maxCostUsd: Type.Optional(
      Type.Number({
        exclusiveMinimum: 0,
        maximum: 1_000_000_000,
        description: 'Most cost in US dollars the workflow may incur, as its handlers report it with ctx.usage.',
      }),
    ),
    action: Type.Optional(
      StringEnum(BUDGET_ACTIONS, {
        default: DEFAULT_BUDGET_ACTION,
        description: `What happens once a committed result takes the usage over a limit: Fail ends the run (reason BudgetExceeded); Suspend starts no new task (running ones finish) until the budget is raised or removed. Default: ${DEFAULT_BUDGET_ACTION}.`,
      }),
    ),
  },
  {
    description:
      "Limits on the model usage the workflow's handlers report (ctx.usage), summed over every committed attempt, failed ones included. Applies to a started run too: raise it to resume a run it suspended.",
    'x-kubernetes-validations': [
      {
        rule: 'has(self.maxTokens) || has(self.maxCostUsd)',
        message: 'spec.budget needs maxTokens or maxCostUsd (or both)',
        fieldPath: '.maxTokens',
        reason: 'FieldValueRequired',
      },
    ],
  },
);

const UsageFigures = {
  inputTokens: Type.Integer({ minimum: 0 }),
  outputTokens: Type.Integer({ minimum: 0 }),
  costUsd: Type.Number({ minimum: 0 }),
};

/** The fields a Workflow and a WorkflowTemplate share (all but tasks, inputs and suspend). */
export const SharedSpecFields = {
  pool: Type.Optional(PoolRef('Default AgentPool for tasks that name none.')),
  parallelism: Type.Optional(
    Type.Integer({
      minimum: 1,
      maximum: 100_000,
      description: 'Most task attempts running at once. Default: no limit.',
    }),
  ),
  priority: Type.Optional(
    Type.Integer({
      minimum: -1000,
      maximum: 1000,
      // No schema default: a Workflow from a template that sets none takes the template's.
      description: `Higher runs first when agents are scarce. Default: ${DEFAULT_PRIORITY}.`,
    }),
  ),
  timeoutSeconds: Type.Optional(
    Type.Integer({
      minimum: 1,
      maximum: 2_592_000,
      description: 'Deadline of the whole workflow, in seconds. Default: none (no deadline).',
    }),
  ),
  retryPolicy: Type.Optional(RetryPolicy),
  ttlSecondsAfterFinished: Type.Optional(
    Type.Integer({
      minimum: 0,
      maximum: 31_536_000,
      description:
        'Delete the workflow (and its records) this many seconds after it finishes. Default: none (kept until deleted).',
    }),
  ),
  budget: Type.Optional(Budget),
};

const Inputs = FreeObject('Workflow inputs, visible to expressions as inputs.', 256);
const Suspend = Type.Boolean({ default: false, description: 'Stop dispatching new tasks while true. Default: false.' });

/** spec.tasks of a Workflow and of a WorkflowTemplate. */
export const WorkflowTasks = Type.Unsafe<Static<typeof WorkflowTask>[]>({
  type: 'array',
  minItems: 1,
  maxItems: MAX_TASKS,
  items: WorkflowTask,
  'x-kubernetes-list-type': 'map',
  'x-kubernetes-list-map-keys': ['name'],
  description: 'The tasks of the DAG.',
});

/** The rules of a spec that holds tasks (a Workflow's without a template, a WorkflowTemplate's). */
export function taskRules(opts: { unlessTemplate?: boolean; poolRule?: boolean } = {}): CelRule[] {
  const guard = (rule: string) => (opts.unlessTemplate ? `!has(self.tasks) || (${rule})` : rule);
  return [
    ...(opts.poolRule === false
      ? []
      : [
          {
            rule: guard('has(self.pool) || self.tasks.all(t, has(t.pool) || has(t.approval))'),
            message: 'spec.pool is required unless every task sets pool (approval tasks need none)',
            fieldPath: '.pool',
            reason: 'FieldValueRequired' as const,
          },
        ]),
    // sets.contains keeps the estimated cost within budget at 200 tasks x 64
    // dependencies; a nested exists() over tasks is 8.5x over it.
    ...dependsOnRules().map((r) => ({ ...r, rule: guard(r.rule) })),
  ];
}

/** The spec a run runs: a Workflow's own, or the one its WorkflowTemplate resolved to. */
export const WorkflowSpec = Type.Object(
  {
    ...SharedSpecFields,
    inputs: Type.Optional(Inputs),
    suspend: Type.Optional(Suspend),
    tasks: WorkflowTasks,
  },
  { description: 'Desired state of the Workflow.', 'x-kubernetes-validations': taskRules() },
);

/** Longest WorkflowTemplate name a workflowTemplateRef may give. */
export const MAX_TEMPLATE_NAME = 253;

/** A Workflow's spec as written: its own tasks, or a WorkflowTemplate's. */
export const WorkflowObjectSpec = Type.Object(
  {
    ...SharedSpecFields,
    workflowTemplateRef: Type.Optional(
      Type.Object(
        {
          name: Type.String({
            minLength: 1,
            maxLength: MAX_TEMPLATE_NAME,
            pattern: '^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$',
            description: "Name of a WorkflowTemplate in the workflow's namespace.",
          }),
        },
        {
          description:
            "Run the tasks of a WorkflowTemplate instead of tasks of its own: spec.inputs are checked against the template's parameters (defaults filled in), and the other fields set here override the template's. The run keeps the template as it was when the run started (status.workflowTemplate).",
        },
      ),
    ),
    inputs: Type.Optional(Inputs),
    suspend: Type.Optional(Suspend),
    tasks: Type.Optional(WorkflowTasks),
  },
  {
    description: 'Desired state of the Workflow.',
    'x-kubernetes-validations': [
      {
        rule: 'has(self.tasks) != has(self.workflowTemplateRef)',
        message: 'spec needs exactly one of tasks and workflowTemplateRef',
        fieldPath: '.tasks',
        reason: 'FieldValueRequired',
      },
      ...taskRules({ unlessTemplate: true }),
    ],
  },
);

export const WorkflowPhases = ['Pending', 'Running', 'Succeeded', 'Failed', 'Cancelled', 'Suspended'] as const;
export type WorkflowPhase = (typeof WorkflowPhases)[number];
export const TaskPhases = [
  'Pending',
  'Queued',
  'Running',
  'Retrying',
  // An approval task waiting for a person's decision (it holds no agent slot).
  'Waiting',
  'Succeeded',
  'Failed',
  'Skipped',
  'Cancelled',
] as const;

export const WorkflowStatus = Type.Object(
  {
    observedGeneration: Type.Optional(Type.Integer({ minimum: 0 })),
    phase: Type.Optional(StringEnum(WorkflowPhases, { description: 'Where the workflow is in its life.' })),
    progress: Type.Optional(
      Type.Object(
        {
          total: Type.Integer({ minimum: 0 }),
          succeeded: Type.Integer({ minimum: 0 }),
          failed: Type.Integer({ minimum: 0 }),
          running: Type.Integer({ minimum: 0 }),
          queued: Type.Integer({ minimum: 0 }),
        },
        { description: 'Task counts, fan-out instances included.' },
      ),
    ),
    progressSummary: Type.Optional(Type.String({ maxLength: 64, description: 'succeeded/total, for kubectl.' })),
    message: Type.Optional(
      Type.String({
        maxLength: 1024,
        description:
          'The latest thing worth knowing, in words: why it failed, what it waits for, or how far it got (kubectl get -o wide shows it).',
      }),
    ),
    retries: Type.Optional(
      Type.Integer({ minimum: 0, description: 'Times a retry (annotation agentflow.io/retry) re-ran the run.' }),
    ),
    lastRetry: Type.Optional(
      Type.Object(
        {
          token: Type.String({ maxLength: 253, description: 'The agentflow.io/retry value this answers.' }),
          at: Type.String({ format: 'date-time' }),
          started: Type.Boolean({ description: 'Whether it re-ran anything; false: refused, message says why.' }),
          tasks: Type.Integer({ minimum: 0, description: 'Task instances it put back to run.' }),
          message: Type.String({ maxLength: 1024 }),
        },
        { description: 'What the latest retry request did.' },
      ),
    ),
    lastRerun: Type.Optional(
      Type.Object(
        {
          token: Type.String({ maxLength: 253, description: 'The agentflow.io/rerun value this answers.' }),
          name: Type.String({ maxLength: 253, description: 'The Workflow that runs this one again from scratch.' }),
        },
        { description: 'The copy the latest rerun request made.' },
      ),
    ),
    startedAt: Type.Optional(Type.String({ format: 'date-time' })),
    finishedAt: Type.Optional(Type.String({ format: 'date-time' })),
    outputs: Type.Optional(FreeObject('Outputs of the tasks no other task depends on (size-bounded).')),
    usage: Type.Optional(
      Type.Object(
        {
          ...UsageFigures,
          byModel: Type.Optional(
            Type.Array(Type.Object({ model: Type.String({ maxLength: 128 }), ...UsageFigures }), {
              maxItems: MAX_STATUS_USAGE_MODELS,
              description: `Per model, the ${MAX_STATUS_USAGE_MODELS} costliest (the totals count every model).`,
            }),
          ),
        },
        {
          description:
            'Model usage the handlers reported (ctx.usage), summed over every committed attempt, failed ones included.',
        },
      ),
    ),
    tasks: Type.Optional(
      Type.Array(
        Type.Object({
          name: Type.String({ maxLength: 253 }),
          phase: StringEnum(TaskPhases, { description: 'Phase of the task (the latest attempt).' }),
          attempts: Type.Optional(Type.Integer({ minimum: 0 })),
          message: Type.Optional(Type.String({ maxLength: 1024 })),
          usage: Type.Optional(Type.Object(UsageFigures, { description: "Model usage of the task's attempts." })),
          memoized: Type.Optional(
            Type.Integer({
              minimum: 1,
              description: 'Instances of the task whose output came from the memoization cache (no agent ran them).',
            }),
          ),
        }),
        { maxItems: 1000, description: 'Per-task summary, bounded; full records are in etcd.' },
      ),
    ),
    workflowTemplate: Type.Optional(
      Type.Object(
        {
          name: Type.String({ maxLength: MAX_TEMPLATE_NAME }),
          uid: Type.String({ maxLength: 128 }),
          generation: Type.Integer({ minimum: 0, description: 'The generation of the template the run started with.' }),
          spec: FreeObject(
            "The spec the run runs: the template's as it was when the run started, with the workflow's inputs and overrides applied.",
          ),
        },
        { description: 'The WorkflowTemplate the run runs (spec.workflowTemplateRef), as it was when it started.' },
      ),
    ),
    conditions: Type.Optional(Conditions),
  },
  { description: 'Observed state of the Workflow.' },
);

export const WorkflowSchema = Type.Object(
  {
    apiVersion: Type.String(),
    kind: Type.String(),
    metadata: ObjectMeta,
    spec: WorkflowObjectSpec,
    status: Type.Optional(WorkflowStatus),
  },
  { description: 'A DAG of tasks run by the agents of AgentPools.' },
);

export type WorkflowTask = Static<typeof WorkflowTask>;
export type Approval = Static<typeof Approval>;
export type WorkflowSpec = Static<typeof WorkflowSpec>;
export type WorkflowObjectSpec = Static<typeof WorkflowObjectSpec>;
export type Budget = Static<typeof Budget>;
export type WorkflowStatus = Static<typeof WorkflowStatus>;
export type Workflow = Static<typeof WorkflowSchema>;

/**
 * The tasks a Workflow runs: its own, or (spec.workflowTemplateRef) those of the
 * template as its run started with it (status.workflowTemplate); none before then.
 */
export function workflowTasks(wf: RunSpecSource): WorkflowTask[] {
  const tasks = runSpecOf(wf).tasks;
  return Array.isArray(tasks) ? tasks : [];
}

type RunSpecSource = {
  spec?: Partial<WorkflowObjectSpec>;
  status?: { workflowTemplate?: { spec?: Record<string, unknown> } };
};

/** The spec a Workflow's run runs as far as the object tells: its own, or its template's as resolved. */
export function runSpecOf(wf: RunSpecSource): Partial<WorkflowSpec> {
  if (!wf.spec?.workflowTemplateRef) return (wf.spec ?? {}) as Partial<WorkflowSpec>;
  return (wf.status?.workflowTemplate?.spec ?? {}) as Partial<WorkflowSpec>;
}
