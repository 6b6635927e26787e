import { EventEmitter } from 'node:events';
import { type ClientDuplexStream, status as GrpcStatus, type Metadata, type StatusObject } from '@grpc/grpc-js';
import type { DispatcherClient } from '../gen/agentflow/v1/Dispatcher.ts';
import type { AgentMessage, DispatcherMessage__Output } from '../lib/proto.ts';
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

  constructor(client: DispatcherClient, metadata: Metadata) {
    super();
    this.call = client.Connect(metadata);
    this.outbox = new Outbox(this.call, MAX_OUTBOUND_QUEUE);
    this.closed = new Promise((resolve) => {
      const finish = (err: Error | undefined) => {
        if (this.over) return;
        this.over = true;
        this.registered = false;
        this.outbox.close();
        resolve(err);
      };
      this.call.on('data', (m: DispatcherMessage__Output) => {
        if (!this.over) this.emit('message', m);
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
