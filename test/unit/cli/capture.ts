// An Io for the CLI's unit tests: what the command wrote to stdout and stderr.
import type { Io } from '../../../src/cli/user/io.ts';

export interface Captured extends Io {
  stdout: string;
  stderr: string;
}

export function capture(
  opts: { tty?: boolean; color?: boolean; columns?: number; rows?: number; stdin?: string } = {},
) {
  const c: Captured = {
    stdout: '',
    stderr: '',
    out(t) {
      c.stdout += t;
    },
    err(t) {
      c.stderr += t;
    },
    isTTY: opts.tty ?? false,
    color: opts.color ?? false,
    columns: opts.columns,
    rows: opts.rows,
    readStdin: () => Promise.resolve(opts.stdin ?? ''),
  };
  return c;
}
