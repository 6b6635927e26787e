import { EventEmitter } from 'node:events';
import { type ClientDuplexStream, status as GrpcStatus, type Metadata, type StatusObject } from '@grpc/grpc-js';
import type { DispatcherClient } from '../gen/agentflow/v1/Dispatcher.ts';
import type { Result } from '../gen/agentflow/v1/Result.ts';
import type { AgentMessage, DispatcherMessage__Output } from '../lib/proto.ts';
import {
  Coalescer,
  itemBytes,
  PROTOCOL_APPROVALS,
  PROTOCOL_BATCHING,
  PROTOCOL_STREAM,
  PROTOCOL_TASK_LOGS,
} from '../lib/wire-batch.ts';
import { Outbox } from './outbox.ts';

/** Messages waiting for 'drain' before the stream is given up as stuck. */
export const MAX_OUTBOUND_QUEUE = 10_000;

/**
 * One Connect stream. `closed` resolves once, when the stream is over for any
 * reason (undefined when the dispatcher ended it cleanly); the agent then
 * decides whether to reconnect.
 */
export class Connection extends EventEmitter<{ message: [DispatcherMessage__Output] }> {
  /** Registered arrived on this stream: the dispatcher will now read what we send. */
  registered = false;
  /** Attempt keys reported in this stream's Register. */
  reported: ReadonlySet<string> = new Set();
  readonly closed: Promise<Error | undefined>;
  private readonly call: ClientDuplexStream<AgentMessage, DispatcherMessage__Output>;
  private readonly outbox: Outbox<AgentMessage>;
  private over = false;
  /** Whether the dispatcher reads ResultBatch (its Registered.protocol >= 2). */
  private batching = false;
  /** Whether the dispatcher reads TaskLog (its Registered.protocol >= 3). */
  taskLogs = false;
  /** Whether the dispatcher keeps TaskLog.chunks, streamed output (its Registered.protocol >= 4). */
  streams = false;
  /** Whether the dispatcher takes Result.await_approval, ctx.waitForApproval (its Registered.protocol >= 5). */
  approvals = false;
  /** Results finished in this turn of the event loop, written together at its end. */
  private readonly results = new Coalescer<'result', Result>((_, items) => {
    if (items.length === 1) this.write({ result: items[0] as Result });
    else this.write({ results: { results: items } });
  }, setImmediate);

  constructor(client: DispatcherClient, metadata: Metadata) {
    super();
    this.call = client.Connect(metadata);
    this.outbox = new Outbox(this.call, MAX_OUTBOUND_QUEUE);
    this.closed = new Promise((resolve) => {
      const finish = (err: Error | undefined) => {
        if (this.over) return;
        this.over = true;
        this.registered = false;
        this.results.clear();
        this.outbox.close();
        resolve(err);
      };
      this.call.on('data', (m: DispatcherMessage__Output) => {
        if (this.over) return;
        // A batch is handled as its items one by one, in order: the agent's logic sees single messages.
        if (m.msg === 'assigns') {
          for (const assign of m.assigns?.assigns ?? [])
            if (!this.over) this.emit('message', { msg: 'assign', assign });
          return;
        }
        if (m.msg === 'acks') {
          for (const ack of m.acks?.acks ?? []) if (!this.over) this.emit('message', { msg: 'ack', ack });
          return;
        }
        if (m.msg === 'registered') {
          const protocol = m.registered?.protocol ?? 0;
          this.batching = protocol >= PROTOCOL_BATCHING;
          this.taskLogs = protocol >= PROTOCOL_TASK_LOGS;
          this.streams = protocol >= PROTOCOL_STREAM;
          this.approvals = protocol >= PROTOCOL_APPROVALS;
        }
        this.emit('message', m);
      });
      // The dispatcher finished its side: finish ours so the call completes.
      this.call.on('end', () => {
        // Nothing sent from here on would be read: requests must wait for the next stream.
        this.registered = false;
        if (!this.call.writableEnded) this.call.end();
      });
      this.call.on('error', (err: Error) => finish(err));
      this.call.on('status', (s: StatusObject) =>
        finish(
          s.code === GrpcStatus.OK
            ? undefined
            : Object.assign(new Error(`stream closed: ${s.details || `code ${s.code}`}`), {
                code: s.code,
                details: s.details,
              }),
        ),
      );
    });
  }

  get open(): boolean {
    return !this.over;
  }

  /**
   * Writes in order, honouring backpressure. A best-effort message (progress,
   * heartbeat) is dropped when the queue is full; anything else closes the
   * stream instead. False when the message did not get queued.
   */
  send(msg: AgentMessage, bestEffort = false): boolean {
    if (this.over || this.call.writableEnded) return false;
    if (this.batching) {
      if (msg.result) {
        this.results.add('result', msg.result, itemBytes(msg.result.outputJson ?? msg.result.error?.message));
        return true;
      }
      this.results.flush();
    }
    return this.write(msg, bestEffort);
  }

  private write(msg: AgentMessage, bestEffort = false): boolean {
    if (this.over || this.call.writableEnded) return false;
    const r = this.outbox.send(msg, bestEffort);
    if (r === 'overflow') {
      this.call.cancel();
      return false;
    }
    return r !== 'dropped';
  }

  /** Half-closes, lets the dispatcher finish for up to `graceMs`, then cancels. */
  async end(graceMs: number): Promise<void> {
    if (this.over) return;
    this.results.flush();
    if (!this.call.writableEnded) this.call.end();
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, graceMs);
    });
    await Promise.race([this.closed, late]);
    clearTimeout(timer);
    this.cancel();
  }

  cancel(): void {
    if (!this.over) this.call.cancel();
  }
}
