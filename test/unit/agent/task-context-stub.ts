// A bare TaskContext for running built-in handlers outside an agent.
import { INVALID_SPAN_CONTEXT, type Span, trace } from '@opentelemetry/api';
import { AttemptLog } from '../../../src/agent/attempt-log.ts';
import type { TaskContext } from '../../../src/agent/index.ts';
import { type Logger, silentLogger } from '../../../src/lib/log.ts';

export function stubContext(
  input: unknown,
  signal: AbortSignal = new AbortController().signal,
  logger: Logger = silentLogger,
  span: Span = trace.wrapSpanContext(INVALID_SPAN_CONTEXT),
): TaskContext {
  const unused = () => {
    throw new Error('not available in this test');
  };
  return {
    taskId: 'wf-1/fetch',
    namespace: 'team-a',
    workflow: 'wf-1',
    handler: 'fetch',
    attempt: 3,
    input,
    signal,
    span,
    log: new AttemptLog(logger).taskLog(),
    get state(): never {
      return unused();
    },
    progress: () => undefined,
    stream: () => undefined,
    usage: () => undefined,
    lock: unused,
    spawn: unused,
    send: unused,
    onMessage: unused,
    waitForSignal: unused,
    waitForApproval: unused,
    onSignal: unused,
  };
}
