// biome-ignore lint/correctness/noUnusedImports: tsc names these in the emitted declarations of the schemas below (TS4023 without them: `npm run build` and the Dockerfile fail)
import { type Hint, type Kind, type OptionalKind, type ReadonlyKind, type Static, Type } from '@sinclair/typebox';
import { Conditions, ObjectMeta, StringEnum, StringMap } from './schema-helpers.ts';
import { WorkflowObjectSpec } from './workflow.ts';

// CronWorkflow: starts a Workflow on a cron schedule, as a CronJob starts Jobs,
// with CronJob's fields and semantics (concurrencyPolicy, startingDeadlineSeconds,
// suspend, history limits, missed schedules after an outage). Each run is a
// Workflow owned by the CronWorkflow, named <cron>-<scheduled unix time>, so a
// schedule is started at most once whoever leads.

/** Longest CronWorkflow name: its runs are named <name>-<10-digit unix time> (a CronJob's is 52 too). */
export const MAX_CRON_WORKFLOW_NAME = 52;
export const CONCURRENCY_POLICIES = ['Allow', 'Forbid', 'Replace'] as const;
export type ConcurrencyPolicy = (typeof CONCURRENCY_POLICIES)[number];
export const DEFAULT_CONCURRENCY_POLICY: ConcurrencyPolicy = 'Allow';
export const DEFAULT_SUCCESSFUL_HISTORY = 3;
export const DEFAULT_FAILED_HISTORY = 1;
/** As the CronJob controller: more missed schedules than this since the last are not all counted. */
export const MAX_MISSED_SCHEDULES = 100;
/** Label on each run: the CronWorkflow that started it. */
export const CRON_WORKFLOW_LABEL = 'agentflow.io/cron-workflow';
/** Annotation on each run: the time it was scheduled for (RFC 3339). */
export const SCHEDULED_TIME_ANNOTATION = 'agentflow.io/scheduled-time';
/** The cron descriptors taken besides five (or six, seconds first) fields. */
export const CRON_DESCRIPTORS = ['@yearly', '@annually', '@monthly', '@weekly', '@daily', '@midnight', '@hourly'];
/** The shape of a schedule; the operator parses it (and says what is wrong) with cron-parser. */
export const SCHEDULE_PATTERN = `^(${CRON_DESCRIPTORS.join('|')}|\\S+( \\S+){4,5})$`;

export const CronWorkflowSpec = Type.Object(
  {
    schedule: Type.String({
      minLength: 1,
      maxLength: 256,
      pattern: SCHEDULE_PATTERN,
      description:
        'When to start a run: standard cron (minute hour day-of-month month day-of-week; e.g. "*/15 * * * *"), one of @yearly, @monthly, @weekly, @daily, @hourly, or six fields with seconds first.',
    }),
    timeZone: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: 64,
        description: 'IANA time zone the schedule is read in (e.g. "Europe/Paris"). Default: UTC.',
      }),
    ),
    concurrencyPolicy: Type.Optional(
      StringEnum(CONCURRENCY_POLICIES, {
        default: DEFAULT_CONCURRENCY_POLICY,
        description: `What to do when a run is due while an earlier one still runs: Allow (start it too), Forbid (skip it while one runs), Replace (cancel the running ones, then start it). Default: ${DEFAULT_CONCURRENCY_POLICY}.`,
      }),
    ),
    startingDeadlineSeconds: Type.Optional(
      Type.Integer({
        minimum: 0,
        maximum: 31_536_000,
        description:
          'A run not started within this many seconds of its scheduled time (the operator was down, or Forbid held it back) is skipped. Default: none (started however late).',
      }),
    ),
    suspend: Type.Optional(
      Type.Boolean({
        default: false,
        description: 'Start no runs while true (running ones go on). Default: false.',
      }),
    ),
    successfulJobsHistoryLimit: Type.Optional(
      Type.Integer({
        minimum: 0,
        maximum: 1000,
        default: DEFAULT_SUCCESSFUL_HISTORY,
        description: `Succeeded runs kept; older ones are deleted. Default: ${DEFAULT_SUCCESSFUL_HISTORY}.`,
      }),
    ),
    failedJobsHistoryLimit: Type.Optional(
      Type.Integer({
        minimum: 0,
        maximum: 1000,
        default: DEFAULT_FAILED_HISTORY,
        description: `Failed or cancelled runs kept; older ones are deleted. Default: ${DEFAULT_FAILED_HISTORY}.`,
      }),
    ),
    workflowMetadata: Type.Optional(
      Type.Object(
        {
          labels: Type.Optional(
            StringMap(Type.String({ maxLength: 63 }), { description: 'Labels of each run.', maxProperties: 64 }),
          ),
          annotations: Type.Optional(
            StringMap(Type.String({ maxLength: 65536 }), {
              description: 'Annotations of each run.',
              maxProperties: 64,
            }),
          ),
        },
        { description: "Labels and annotations each run's Workflow gets." },
      ),
    ),
    workflowSpec: {
      ...WorkflowObjectSpec,
      description: "Each run's Workflow spec: its own tasks, or a workflowTemplateRef.",
    },
  },
  { description: 'A schedule and the Workflow it starts.' },
);

const RunRef = Type.Object({
  name: Type.String({ maxLength: 253 }),
  uid: Type.String({ maxLength: 128 }),
});

export const CronWorkflowStatus = Type.Object(
  {
    active: Type.Optional(Type.Array(RunRef, { maxItems: 1000, description: 'Runs that have not finished.' })),
    lastScheduleTime: Type.Optional(
      Type.String({ format: 'date-time', description: 'The scheduled time of the latest run started.' }),
    ),
    lastSuccessfulTime: Type.Optional(
      Type.String({ format: 'date-time', description: 'When the latest run that succeeded finished.' }),
    ),
    nextScheduleTime: Type.Optional(
      Type.String({ format: 'date-time', description: 'When the next run is due (absent while suspended).' }),
    ),
    observedGeneration: Type.Optional(Type.Integer({ minimum: 0 })),
    conditions: Type.Optional(Conditions),
  },
  { description: 'Observed state of the CronWorkflow.' },
);

export const CronWorkflowSchema = Type.Object(
  {
    apiVersion: Type.String(),
    kind: Type.String(),
    metadata: ObjectMeta,
    spec: CronWorkflowSpec,
    status: Type.Optional(CronWorkflowStatus),
  },
  {
    description: 'Starts a Workflow on a cron schedule, as a CronJob starts Jobs.',
    'x-kubernetes-validations': [
      {
        rule: `self.metadata.name.size() <= ${MAX_CRON_WORKFLOW_NAME}`,
        message: `metadata.name must be at most ${MAX_CRON_WORKFLOW_NAME} characters (its runs add -<unix time>)`,
      },
    ],
  },
);

export type CronWorkflowSpec = Static<typeof CronWorkflowSpec>;
export type CronWorkflowStatus = Static<typeof CronWorkflowStatus>;
export type CronWorkflow = Static<typeof CronWorkflowSchema>;
