import type { ServerDuplexStream } from '@grpc/grpc-js';
import { status as GrpcStatus } from '@grpc/grpc-js';
import type { Ack } from '../gen/agentflow/v1/Ack.ts';
import type { AgentMessage__Output } from '../gen/agentflow/v1/AgentMessage.ts';
import type { Assign } from '../gen/agentflow/v1/Assign.ts';
import type { DispatcherMessage } from '../gen/agentflow/v1/DispatcherMessage.ts';
import type { Logger } from '../lib/log.ts';
import { Coalescer, itemBytes } from '../lib/wire-batch.ts';
import type { KeptLease } from '../state/index.ts';
import type { AgentIdentity } from './auth.ts';

/** Outbound messages waiting for the stream to drain before the agent is cut off as too slow. */
export const MAX_OUTBOUND_QUEUE = 10_000;
/** ...and at most this many bytes of them (messages may carry up to 4 MiB each). */
export const MAX_OUTBOUND_BYTES = 64 * 1024 * 1024;

/** About what a message costs on the wire; only computed for messages that must wait. */
export function approxBytes(msg: DispatcherMessage): number {
  return Buffer.byteLength(JSON.stringify(msg));
}

/**
 * One connected agent: what it registered, the slots its assignments use,
 * and a write path that honours backpressure without ever blocking the
 * dispatcher (a bounded queue; an agent that cannot keep up is disconnected
 * and may reconnect).
 */
export class AgentConn {
  readonly agentId: string;
  /** `namespace/agentId`: agent ids are unique only within a namespace (pods are `<pool>-<n>`). */
  readonly key: string;
  readonly namespace: string;
  readonly pool: string;
  readonly pod: string;
  readonly handlers: ReadonlySet<string>;
  readonly capacity: number;
  readonly lease: KeptLease;
  readonly log: Logger;
  /** Who the agent proved to be; replaced by a Reauth with a fresh token. */
  identity: AgentIdentity;
  /** When the agent was last heard from (ms, performance.now()): its lease is kept while this is recent. */
  lastSeen = performance.now();
  used = 0;
  draining = false;
  closed = false;
  /** taskKey of every attempt assigned to this agent and not yet settled. */
  readonly assigned = new Set<string>();
  /**
   * Attempts taken back (cancelled, timed out, re-queued) whose handlers may
   * still run: "taskId@attempt" -> cost. Their slots stay taken until the
   * agent's Result for them says the handler stopped.
   */
  readonly cancelling = new Map<string, number>();
  private readonly stream: ServerDuplexStream<AgentMessage__Output, DispatcherMessage>;
  private readonly outbound: { msg: DispatcherMessage; bytes: number }[] = [];
  private outboundBytes = 0;
  private waitingForDrain = false;
  /** Whether the agent reads AssignBatch and AckBatch (its Register.protocol >= 2). */
  readonly batching: boolean;
  /** Assigns and Acks of this turn, written as batches at its end (or before any other message). */
  private readonly coalescer = new Coalescer<'assign' | 'ack', Assign | Ack>((kind, items) => {
    if (items.length === 1) this.write(kind === 'assign' ? { assign: items[0] as Assign } : { ack: items[0] as Ack });
    else if (kind === 'assign') this.write({ assigns: { assigns: items as Assign[] } });
    else this.write({ acks: { acks: items as Ack[] } });
  });

  constructor(
    reg: {
      agentId: string;
      namespace: string;
      pool: string;
      pod: string;
      handlers: string[];
      capacity: number;
      batching?: boolean;
    },
    lease: KeptLease,
    identity: AgentIdentity,
    stream: ServerDuplexStream<AgentMessage__Output, DispatcherMessage>,
    log: Logger,
  ) {
    this.agentId = reg.agentId;
    this.key = `${reg.namespace}/${reg.agentId}`;
    this.namespace = reg.namespace;
    this.pool = reg.pool;
    this.pod = reg.pod;
    this.handlers = new Set(reg.handlers);
    this.capacity = reg.capacity;
    this.batching = reg.batching ?? false;
    this.lease = lease;
    this.identity = identity;
    this.stream = stream;
    this.log = log;
  }

  /** The etcd lease (decimal) the agent's claims and locks are bound to. */
  get leaseId(): string {
    return this.lease.id;
  }

  get free(): number {
    return this.draining || this.closed ? 0 : this.capacity - this.used;
  }

  /**
   * Queues a message for the agent. To a batching agent, Assigns and Acks wait for the end of the
   * turn and go out together; any other message first writes what waits, so order is kept.
   */
  send(msg: DispatcherMessage): void {
    if (this.closed) return;
    if (this.batching) {
      if (msg.assign) {
        this.coalescer.add('assign', msg.assign, itemBytes(msg.assign.inputJson));
        return;
      }
      if (msg.ack) {
        this.coalescer.add('ack', msg.ack, itemBytes(msg.ack.message));
        return;
      }
      this.coalescer.flush();
    }
    this.write(msg);
  }

  private write(msg: DispatcherMessage): void {
    if (this.closed) return;
    if (this.waitingForDrain || this.outbound.length > 0) {
      const bytes = approxBytes(msg);
      if (this.outbound.length >= MAX_OUTBOUND_QUEUE || this.outboundBytes + bytes > MAX_OUTBOUND_BYTES) {
        this.log.warn('Agent is not reading its stream; disconnecting it', {
          queued: this.outbound.length,
          bytes: this.outboundBytes,
        });
        this.close();
        return;
      }
      this.outbound.push({ msg, bytes });
      this.outboundBytes += bytes;
      return;
    }
    if (!this.stream.write(msg)) this.awaitDrain();
  }

  private awaitDrain(): void {
    this.waitingForDrain = true;
    this.stream.once('drain', () => {
      this.waitingForDrain = false;
      while (this.outbound.length > 0 && !this.closed) {
        const { msg: next, bytes } = this.outbound.shift() as { msg: DispatcherMessage; bytes: number };
        this.outboundBytes -= bytes;
        if (!this.stream.write(next)) {
          this.awaitDrain();
          return;
        }
      }
    });
  }

  private readonly closeListeners: (() => void)[] = [];

  /** Runs once the connection is closed (by either side). */
  onClose(listener: () => void): void {
    if (this.closed) listener();
    else this.closeListeners.push(listener);
  }

  private closing(): void {
    for (const l of this.closeListeners.splice(0)) l();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.closing();
    this.outbound.length = 0;
    this.outboundBytes = 0;
    this.coalescer.clear();
    try {
      this.stream.end();
    } catch {
      // already gone
    }
  }

  /** Ends the stream with a gRPC status the agent sees (e.g. UNAUTHENTICATED when its token expired). */
  closeWith(code: keyof typeof GrpcStatus, details: string): void {
    if (this.closed) return;
    this.closed = true;
    this.closing();
    this.outbound.length = 0;
    this.outboundBytes = 0;
    this.coalescer.clear();
    this.stream.emit('error', Object.assign(new Error(details), { code: GrpcStatus[code], details }));
  }
}
