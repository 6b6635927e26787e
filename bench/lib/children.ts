import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

/** A line a child process writes on stdout: one JSON object. */
export type ChildMessage =
  | { type: 'ready'; [k: string]: unknown }
  | { type: 'start'; id: string; at: number; attempt: number };

/**
 * A benchmark child process (agent host or BullMQ worker host): started with
 * its config as one JSON argument, it prints JSON lines on stdout and
 * {"type":"ready"} once it can take work. stderr is passed through.
 */
export class Child {
  readonly name: string;
  readonly pid: number;
  readonly ready: Promise<Record<string, unknown>>;
  readonly exited: Promise<void>;
  private readonly proc: ChildProcess;
  private exitedFlag = false;

  constructor(
    name: string,
    script: string,
    config: unknown,
    onMessage: (m: ChildMessage, from: Child) => void = () => {},
    /** Node flags for the child (e.g. what the operator gives agent pods in NODE_OPTIONS). */
    nodeFlags: string[] = [],
  ) {
    this.name = name;
    this.proc = spawn(process.execPath, [...nodeFlags, script, JSON.stringify(config)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    if (this.proc.pid === undefined) throw new Error(`could not start ${script}`);
    this.pid = this.proc.pid;
    this.exited = new Promise((resolve) =>
      this.proc.once('exit', () => {
        this.exitedFlag = true;
        resolve();
      }),
    );
    this.ready = new Promise((resolve, reject) => {
      void this.exited.then(() => reject(new Error(`${name} (${script}) exited before it was ready`)));
      createInterface({ input: this.proc.stdout as NodeJS.ReadableStream }).on('line', (line) => {
        const m = JSON.parse(line) as ChildMessage;
        if (m.type === 'ready') resolve(m);
        else onMessage(m, this);
      });
    });
    this.ready.catch(() => undefined);
  }

  signal(sig: NodeJS.Signals): void {
    this.proc.kill(sig);
  }

  /** kill -9: the process gets no chance to clean up. */
  kill(): void {
    this.proc.kill('SIGKILL');
  }

  /** SIGTERM (the child shuts down cleanly), SIGKILL after `graceMs`. */
  async stop(graceMs = 5_000): Promise<void> {
    if (this.exitedFlag) return;
    this.proc.kill('SIGTERM');
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}

/** For the child side: a line to the parent. */
export function tell(m: ChildMessage): void {
  process.stdout.write(`${JSON.stringify(m)}\n`);
}

/** For the child side: its config, the one JSON argument. */
export function childConfig<T>(): T {
  const arg = process.argv[2];
  if (!arg) throw new Error(`${process.argv[1]}: expected the config as one JSON argument`);
  return JSON.parse(arg) as T;
}
