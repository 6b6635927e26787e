// The environment of an `exec` handler's command. The agent's own environment
// holds what the command must not have (the path of its ServiceAccount token,
// its AGENTFLOW_* settings, a KUBECONFIG...), and the command runs user or
// model-driven code: so it starts from nothing and gets only what is listed here.
import { traceparentOfSpan } from '../../lib/trace-context.ts';
import type { ExecHandlerSpec, TaskContext } from '../types.ts';

/** What a shell's login PATH would be on a Debian or distroless image, when the agent has none. */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** Not secrets, and commands need them to behave: taken from the agent when it has them. */
const PASSED_THROUGH = ['LANG', 'TZ'] as const;

/** Set by the agent for each attempt; `env` and `inheritEnv` may not name them. */
export const TASK_IDENTITY_VARS = [
  'AGENTFLOW_TASK_ID',
  'AGENTFLOW_WORKFLOW',
  'AGENTFLOW_NAMESPACE',
  'AGENTFLOW_ATTEMPT',
  'TRACEPARENT',
] as const;

/** Kubernetes' classic rule for container env names (C identifier plus "-" and "."). */
export const ENV_NAME = /^[-._a-zA-Z][-._a-zA-Z0-9]*$/;

/**
 * The command's environment, lowest precedence first: PATH, LANG, TZ; the
 * names in `inheritEnv` as the agent has them; `env`; the task identity and,
 * when the attempt is traced, TRACEPARENT.
 * HOME is left to the caller when nothing above sets it (see exec.ts).
 */
export function childEnv(spec: ExecHandlerSpec, ctx: TaskContext, agentEnv: NodeJS.ProcessEnv): Record<string, string> {
  const env: Record<string, string> = { PATH: agentEnv.PATH || DEFAULT_PATH };
  for (const name of [...PASSED_THROUGH, ...(spec.inheritEnv ?? [])]) {
    const v = agentEnv[name];
    if (v !== undefined) env[name] = v;
  }
  Object.assign(env, spec.env);
  env.AGENTFLOW_TASK_ID = ctx.taskId;
  env.AGENTFLOW_WORKFLOW = ctx.workflow;
  env.AGENTFLOW_NAMESPACE = ctx.namespace;
  env.AGENTFLOW_ATTEMPT = String(ctx.attempt);
  // The attempt's trace context (W3C traceparent, as OpenTelemetry's environment carriers name it):
  // what the command traces joins the workflow's trace.
  const traceparent = traceparentOfSpan(ctx.span);
  if (traceparent) env.TRACEPARENT = traceparent;
  return env;
}
