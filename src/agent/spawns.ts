import type { ChildTask } from '../gen/agentflow/v1/ChildTask.ts';
import type { SpawnAck__Output } from '../gen/agentflow/v1/SpawnAck.ts';
import type { SpawnTasks } from '../gen/agentflow/v1/SpawnTasks.ts';
import type { Attempt } from './attempt.ts';
import { SpawnRefusedError } from './errors.ts';

/** After an UNAVAILABLE answer (e.g. a new leader that has not loaded the run yet), the next copy goes this much later. */
export const SPAWN_RETRY_MS = 1_000;

interface PendingSpawn {
  requestId: number;
  children: ChildTask[];
  attempt: Attempt;
  resolve: () => void;
  reject: (err: Error) => void;
  retry: NodeJS.Timeout | undefined;
  offAbort: () => void;
}

/**
 * The agent's spawns that have no SpawnAck yet. Each is sent when asked (if a
 * registered stream is up), again after every registration, and again a while
 * after an UNAVAILABLE answer, until the dispatcher acks it (the children are
 * durable) or refuses it; the dispatcher takes copies without adding children
 * twice. Request ids are unique for the life of the agent process, so an
 * answer that arrives on a later stream still finds its request.
 */
export class SpawnRequests {
  private nextId = 1;
  private readonly pending = new Map<number, PendingSpawn>();
  /** Set once the agent stops: later requests fail with it at once. */
  private closedWith: Error | undefined;
  /** Writes on the registered stream, if there is one; else does nothing (registration re-sends). */
  private readonly send: (msg: SpawnTasks) => void;

  constructor(send: (msg: SpawnTasks) => void) {
    this.send = send;
  }

  /** Spawns not answered yet. */
  get size(): number {
    return this.pending.size;
  }

  /** Resolves on the ack; rejects with SpawnRefusedError, or the abort reason when the attempt ends first. */
  request(attempt: Attempt, children: ChildTask[]): Promise<void> {
    if (attempt.signal.aborted) return Promise.reject(attempt.signal.reason as Error);
    if (this.closedWith) return Promise.reject(this.closedWith);
    if (attempt.finished) return Promise.reject(new Error(`spawn: attempt ${attempt.key} has ended`));
    const requestId = this.nextId++;
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => this.settle(requestId, attempt.signal.reason as Error);
      attempt.signal.addEventListener('abort', onAbort, { once: true });
      const p: PendingSpawn = {
        requestId,
        children,
        attempt,
        resolve,
        reject,
        retry: undefined,
        offAbort: () => attempt.signal.removeEventListener('abort', onAbort),
      };
      this.pending.set(requestId, p);
      // A handler that returns without awaiting its spawn cannot learn its fate any more: say so.
      attempt.onFinish(() =>
        this.settle(
          requestId,
          new Error(`spawn: attempt ${attempt.key} ended before the dispatcher acknowledged its children`),
        ),
      );
      this.send(wire(p));
    });
  }

  /** A SpawnAck: settles its request (or, for UNAVAILABLE, sends it again later). */
  onAck(ack: SpawnAck__Output): void {
    const p = this.pending.get(ack.requestId);
    if (!p || p.attempt.taskId !== ack.parentTaskId || p.attempt.attempt !== ack.attempt) return;
    if (ack.errorCode === '') {
      this.settle(ack.requestId);
      return;
    }
    if (ack.errorCode === 'UNAVAILABLE') {
      if (p.retry) clearTimeout(p.retry);
      p.retry = setTimeout(() => {
        p.retry = undefined;
        if (this.pending.get(ack.requestId) === p) this.send(wire(p));
      }, SPAWN_RETRY_MS);
      p.retry.unref();
      return;
    }
    this.settle(ack.requestId, new SpawnRefusedError(ack.errorCode, ack.errorMessage, ack.parentTaskId, ack.attempt));
  }

  /** A stream registered: every unanswered spawn goes out on it (duplicates are harmless). */
  resendAll(): void {
    for (const p of this.pending.values()) {
      if (p.retry) clearTimeout(p.retry);
      p.retry = undefined;
      this.send(wire(p));
    }
  }

  /** The agent is stopping: nothing will be answered, now or later. */
  rejectAll(err: Error): void {
    this.closedWith = err;
    for (const id of [...this.pending.keys()]) this.settle(id, err);
  }

  private settle(requestId: number, err?: Error): void {
    const p = this.pending.get(requestId);
    if (!p) return;
    this.pending.delete(requestId);
    if (p.retry) clearTimeout(p.retry);
    p.offAbort();
    if (err) p.reject(err);
    else p.resolve();
  }
}

/** The request as it goes out now: under the attempt's current token (a new leader may have claimed it again). */
function wire(p: PendingSpawn): SpawnTasks {
  const a = p.attempt;
  return { parentTaskId: a.taskId, attempt: a.attempt, token: a.token, children: p.children, requestId: p.requestId };
}
