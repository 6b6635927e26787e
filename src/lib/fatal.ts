import type { Logger } from './log.ts';

/**
 * One policy for what nothing handled: log it as a structured line with its stack, then exit 1 so
 * Kubernetes restarts the process. A rejection nobody awaited means state nobody owns; carrying on
 * would hide it. Installed once by each command (operator, agent).
 */
export function installFatalHandlers(log: Logger, exit: (code: number) => void = (c) => process.exit(c)): () => void {
  const die = (kind: string) => (err: unknown) => {
    const error = err instanceof Error ? err : new Error(String(err));
    log.error(`Fatal: ${kind}; exiting so the process is restarted`, { error, stack: error.stack });
    exit(1);
  };
  const onRejection = die('unhandled promise rejection');
  const onException = die('uncaught exception');
  process.on('unhandledRejection', onRejection);
  process.on('uncaughtException', onException);
  return () => {
    process.off('unhandledRejection', onRejection);
    process.off('uncaughtException', onException);
  };
}
