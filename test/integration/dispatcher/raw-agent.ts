import { readFileSync } from 'node:fs';
import { type ClientDuplexStream, credentials, Metadata, type StatusObject } from '@grpc/grpc-js';
import type { AgentMessage } from '../../../src/gen/agentflow/v1/AgentMessage.ts';
import type { DispatcherMessage__Output } from '../../../src/gen/agentflow/v1/DispatcherMessage.ts';
import { agentflowProto, KEEPALIVE_OPTIONS } from '../../../src/lib/proto.ts';

/**
 * A hand-driven agent stream for wire tests: sends exactly what the test says
 * (malformed messages included) and collects what the dispatcher answers.
 */
export class RawAgent {
  readonly stream: ClientDuplexStream<AgentMessage, DispatcherMessage__Output>;
  readonly received: DispatcherMessage__Output[] = [];
  ended = false;
  /** The call's final status (code 16 UNAUTHENTICATED, 7 PERMISSION_DENIED, 14 UNAVAILABLE...). */
  status: StatusObject | undefined;
  private waiters: (() => void)[] = [];

  /**
   * `tokenFile` goes in `authorization: Bearer`; `caFile` is trusted for TLS
   * (the dispatcher's certificate names 127.0.0.1). `plaintext` dials without TLS.
   */
  constructor(port: number, o: { caFile?: string; tokenFile?: string; token?: string; plaintext?: boolean } = {}) {
    const Client = agentflowProto().agentflow.v1.Dispatcher;
    const creds =
      o.plaintext || !o.caFile ? credentials.createInsecure() : credentials.createSsl(readFileSync(o.caFile));
    const client = new Client(`127.0.0.1:${port}`, creds, KEEPALIVE_OPTIONS);
    const md = new Metadata();
    const token = o.token ?? (o.tokenFile ? readFileSync(o.tokenFile, 'utf8').trim() : undefined);
    if (token) md.set('authorization', `Bearer ${token}`);
    this.stream = client.Connect(md);
    this.stream.on('status', (st: StatusObject) => {
      this.status = st;
      this.ended = true;
      this.wake();
    });
    this.stream.on('data', (m: DispatcherMessage__Output) => {
      this.received.push(m);
      this.wake();
    });
    this.stream.on('end', () => {
      this.ended = true;
      this.wake();
    });
    this.stream.on('error', () => {
      this.ended = true;
      this.wake();
    });
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  send(m: AgentMessage): void {
    this.stream.write(m);
  }

  /** The next message of a kind (removed from the inbox), or throws after timeoutMs. */
  async next<K extends NonNullable<DispatcherMessage__Output['msg']>>(
    kind: K,
    timeoutMs = 5_000,
  ): Promise<NonNullable<DispatcherMessage__Output[K]>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.received.findIndex((m) => m.msg === kind);
      if (i >= 0) return this.received.splice(i, 1)[0]?.[kind] as NonNullable<DispatcherMessage__Output[K]>;
      if (Date.now() > deadline)
        throw new Error(`no ${kind} within ${timeoutMs} ms; got ${JSON.stringify(this.received.map((m) => m.msg))}`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
  }

  /** Waits for the call to end; its status. */
  async closed(timeoutMs = 10_000): Promise<StatusObject> {
    const deadline = Date.now() + timeoutMs;
    while (!this.status) {
      if (Date.now() > deadline) throw new Error(`the stream did not end within ${timeoutMs} ms`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
    return this.status;
  }

  count(kind: NonNullable<DispatcherMessage__Output['msg']>): number {
    return this.received.filter((m) => m.msg === kind).length;
  }

  close(): void {
    this.stream.end();
  }
}
