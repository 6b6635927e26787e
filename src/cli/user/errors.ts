// How the CLI fails: what it prints on stderr and the exit code (docs/cli.md).
// Exit 1: the request failed (the cluster refused or does not answer, a file
// cannot be read, a workflow Failed); exit 2: the command line is wrong
// (commander's parse errors and UsageError), decided before anything is sent.
import { KubeApiError } from '../../operator/kube/client.ts';

export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;
/** What a shell reports for a process ended by SIGINT (128 + 2). */
export const EXIT_INTERRUPTED = 130;

/** A failure the CLI explains in words: printed as `error: <message>`, exit 1. */
export class CliError extends Error {
  readonly exitCode: number;
  constructor(message: string, exitCode: number = EXIT_FAILED) {
    super(message);
    this.name = 'CliError';
    this.exitCode = exitCode;
  }
}

/** The command line is wrong (a flag's value, flags that do not go together): exit 2. */
export class UsageError extends CliError {
  constructor(message: string) {
    super(message, EXIT_USAGE);
    this.name = 'UsageError';
  }
}

/** Reasons by HTTP status, for servers whose error body is no Status (as kubectl names them). */
const REASONS: Record<number, string> = {
  400: 'BadRequest',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'NotFound',
  405: 'MethodNotAllowed',
  409: 'Conflict',
  410: 'Gone',
  422: 'Invalid',
  429: 'TooManyRequests',
  500: 'InternalError',
  503: 'ServiceUnavailable',
  504: 'Timeout',
};

/**
 * The Status body's message of a KubeApiError. KubeClient prefixes it with the
 * request and the HTTP status (`GET /apis/...: 403 <message>`), which a user of
 * the CLI does not need: kubectl prints the server's message alone.
 */
export function serverMessage(err: KubeApiError): string {
  return err.message.replace(/^\S+ \S+: \d{3} /, '').trim();
}

/** The reason kubectl would print: the Status's, else the HTTP status's name. */
export function serverReason(err: KubeApiError): string {
  return /^\d+$/.test(err.reason) ? (REASONS[err.status] ?? `HTTP ${err.status}`) : err.reason;
}

/** `Error from server (Forbidden): <message>`, as kubectl prints a refused request. */
export function formatServerError(err: KubeApiError): string {
  return `Error from server (${serverReason(err)}): ${serverMessage(err) || `HTTP ${err.status}`}`;
}

/** What stderr gets for a failure, and the exit code. */
export function describeFailure(err: unknown): { text: string; exitCode: number } {
  if (err instanceof KubeApiError) return { text: `${formatServerError(err)}\n`, exitCode: EXIT_FAILED };
  if (err instanceof CliError) return { text: `error: ${err.message}\n`, exitCode: err.exitCode };
  const message = err instanceof Error ? err.message : String(err);
  return { text: `error: ${message}\n`, exitCode: EXIT_FAILED };
}
