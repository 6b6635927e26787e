/** Why TLS material in a Secret was refused. */
export type TlsMaterialProblem =
  | 'SecretNotFound'
  | 'MissingKey'
  | 'InvalidPem'
  | 'KeyMismatch'
  | 'Expired'
  | 'NotYetValid'
  | 'UntrustedChain'
  | 'UnsupportedKey';

/**
 * TLS material that cannot be served: names the Secret (`namespace/name`),
 * the data key at fault (when one is) and what is wrong with it.
 */
export class TlsMaterialError extends Error {
  readonly problem: TlsMaterialProblem;
  readonly secret: string;
  readonly key: string | undefined;
  /** The message without the Secret and key it names. */
  readonly detail: string;

  constructor(problem: TlsMaterialProblem, secret: string, key: string | undefined, detail: string) {
    super(`Secret ${secret}${key ? ` key ${key}` : ''}: ${detail}`);
    this.name = 'TlsMaterialError';
    this.problem = problem;
    this.secret = secret;
    this.key = key;
    this.detail = detail;
  }
}

/** An option of DispatcherTls that cannot work; names the field. */
export class TlsConfigError extends Error {
  readonly field: string;

  constructor(field: string, detail: string) {
    super(`dispatcher TLS option ${field}: ${detail}`);
    this.name = 'TlsConfigError';
    this.field = field;
  }
}
