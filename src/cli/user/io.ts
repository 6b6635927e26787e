// Where the CLI writes: data to stdout, errors to stderr; whether stdout is a
// terminal (the live view) and takes colour. Tests hand in their own.
export interface Io {
  out(text: string): void;
  err(text: string): void;
  /** stdout is a terminal: `watch` redraws in place. */
  isTTY: boolean;
  /** stdout takes ANSI colour (a terminal that has them; NO_COLOR and FORCE_COLOR honoured). */
  color: boolean;
  columns?: number | undefined;
  rows?: number | undefined;
  /** All of stdin, for `-f -`. */
  readStdin(): Promise<string>;
}

export function processIo(): Io {
  const stdout = process.stdout;
  return {
    out: (t) => {
      stdout.write(t);
    },
    err: (t) => {
      process.stderr.write(t);
    },
    isTTY: stdout.isTTY === true,
    color: stdout.isTTY === true && stdout.hasColors(),
    get columns() {
      return stdout.isTTY ? stdout.columns : undefined;
    },
    get rows() {
      return stdout.isTTY ? stdout.rows : undefined;
    },
    async readStdin() {
      const chunks: Buffer[] = [];
      for await (const c of process.stdin) chunks.push(c as Buffer);
      return Buffer.concat(chunks).toString('utf8');
    },
  };
}
