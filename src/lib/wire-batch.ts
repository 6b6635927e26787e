// Batching on the dispatcher stream (protocol 2, docs/protocol.md): one gRPC message carries many
// Assigns, Acks or Results. Each message costs protobuf framing, an HTTP/2 DATA frame and a turn of
// grpc-js's write path on both ends; under load that, not the payload, is most of the dispatcher's CPU.

/**
 * The protocol revision this code speaks: 2 = AssignBatch, AckBatch and ResultBatch; 3 = TaskLog;
 * 4 = TaskLog.chunks; 5 = Result.await_approval and Assign.approvals; 6 = Assign.traceparent.
 */
export const PROTOCOL_VERSION = 6;
/** The first revision that reads AssignBatch, AckBatch and ResultBatch. */
export const PROTOCOL_BATCHING = 2;
/** The first revision whose dispatcher reads TaskLog messages. */
export const PROTOCOL_TASK_LOGS = 3;
/** The first revision whose dispatcher keeps TaskLog.chunks (streamed output, `ctx.stream`). */
export const PROTOCOL_STREAM = 4;
/** The first revision whose dispatcher takes Result.await_approval (ctx.waitForApproval) and sends Assign.approvals. */
export const PROTOCOL_APPROVALS = 5;
/** Most items in one batch message. */
export const BATCH_MAX_ITEMS = 1024;
/**
 * Most payload bytes in one batch message (well under MAX_MESSAGE_BYTES): an item larger than this
 * goes out alone, so a batch never exceeds what the other side accepts.
 */
export const BATCH_MAX_BYTES = 1024 * 1024;

/** Rough wire size of an item: its JSON payload plus the envelope's fields. */
export function itemBytes(payload: string | undefined): number {
  return (payload?.length ?? 0) + 128;
}

/**
 * Collects items written in one turn of the event loop and writes them, in order, as few messages as
 * possible: a run of items of one kind becomes one batch (bounded by items and bytes), an item alone
 * stays a single message. `flush()` writes what is collected at once; callers flush before writing any
 * other message so the order on the stream is the order of the calls.
 */
export class Coalescer<K extends string, T> {
  private items: { kind: K; item: T; bytes: number }[] = [];
  private scheduled = false;
  private readonly write: (kind: K, items: T[]) => void;
  private readonly schedule: (fn: () => void) => void;

  constructor(write: (kind: K, items: T[]) => void, schedule: (fn: () => void) => void = queueMicrotask) {
    this.write = write;
    this.schedule = schedule;
  }

  get size(): number {
    return this.items.length;
  }

  add(kind: K, item: T, bytes: number): void {
    this.items.push({ kind, item, bytes });
    if (this.scheduled) return;
    this.scheduled = true;
    this.schedule(() => {
      this.scheduled = false;
      this.flush();
    });
  }

  flush(): void {
    if (this.items.length === 0) return;
    const items = this.items;
    this.items = [];
    let run: T[] = [];
    let kind: K | undefined;
    let bytes = 0;
    for (const x of items) {
      if (run.length > 0 && (x.kind !== kind || run.length >= BATCH_MAX_ITEMS || bytes + x.bytes > BATCH_MAX_BYTES)) {
        this.write(kind as K, run);
        run = [];
        bytes = 0;
      }
      kind = x.kind;
      run.push(x.item);
      bytes += x.bytes;
    }
    if (run.length > 0) this.write(kind as K, run);
  }

  /** Forgets what is collected (the stream is gone; the items' owners re-send what matters). */
  clear(): void {
    this.items = [];
  }
}
