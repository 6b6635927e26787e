// agentflow-agent: what agent pods run. Exit codes: 0 after a drain (SIGTERM or
// SIGINT; after the dispatcher's Drain it waits for SIGTERM), 1 when the agent cannot start, 2 for bad
// configuration or usage.
import { flushCompileCache } from 'node:module';
import { parseArgs } from 'node:util';
import { installFatalHandlers } from '../lib/fatal.ts';
import { createLogger } from '../lib/log.ts';
import { tracingConfigured } from '../lib/trace-context.ts';
import { VERSION_LINE } from '../lib/version.ts';
import { loadAgentConfig } from './config.ts';
import { AgentConfigError } from './errors.ts';
import { createAgent } from './index.ts';

const USAGE = `Usage: agentflow-agent [--config agent.yaml] [--handlers module.js]

  -c, --config FILE           settings file (YAML or JSON)
  --handlers MODULE           same as AGENTFLOW_HANDLERS_MODULE (the flag wins); relative to the working directory
  --version                   print agentflow's version
  -h, --help                  this text

Settings come from the config file (YAML or JSON) and the environment, which wins:
  AGENTFLOW_DISPATCHER        dispatcher address, host:port
  AGENTFLOW_TOKEN_FILE        ServiceAccount token (audience agentflow), re-read as it rotates
                              (default /var/run/secrets/agentflow/token, the pod's projected token)
  AGENTFLOW_DISPATCHER_CA_FILE  the dispatcher's CA bundle (default /var/run/secrets/agentflow/ca/ca.crt)
  AGENTFLOW_DISPATCHER_SERVER_NAME  the name in the dispatcher's certificate, if not the address's host
  AGENTFLOW_CREDENTIAL_CHECK_MS  how often the token file is checked for a rotation (default 10000)
  AGENTFLOW_NAMESPACE         namespace; only for agents outside a pool's pods (else the file's, else POD_NAMESPACE)
  AGENTFLOW_POOL              agent pool; likewise (a pod's agent belongs to its pod's pool)
  AGENTFLOW_CAPACITY          task slots
  AGENTFLOW_AGENT_ID          agent id (default: pod name plus a random suffix)
  AGENTFLOW_DRAIN_TIMEOUT_SECONDS  how long SIGTERM waits for in-flight tasks (default 25)
  AGENTFLOW_HANDLERS_MODULE   module whose default export (an object) or named exports are handler functions
`;

/** Runs the command; resolves with the process exit code. */
export async function main(argv: string[]): Promise<number> {
  let config: string | undefined;
  let handlers: string | undefined;
  try {
    const { values } = parseArgs({
      args: argv,
      options: {
        config: { type: 'string', short: 'c' },
        handlers: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean' },
      },
      strict: true,
    });
    if (values.help) {
      process.stdout.write(USAGE);
      return 0;
    }
    if (values.version) {
      process.stdout.write(VERSION_LINE);
      return 0;
    }
    config = values.config;
    handlers = values.handlers;
  } catch (err) {
    process.stderr.write(`agentflow-agent: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }

  const log = createLogger({ component: 'agentflow-agent' });
  installFatalHandlers(log);
  let agent: ReturnType<typeof createAgent>;
  try {
    const env = handlers !== undefined ? { ...process.env, AGENTFLOW_HANDLERS_MODULE: handlers } : process.env;
    const options = await loadAgentConfig({ ...(config !== undefined && { configPath: config }), env });
    agent = createAgent({ ...options, logger: log, installSignalHandlers: true });
  } catch (err) {
    if (!(err instanceof AgentConfigError)) throw err;
    process.stderr.write(`agentflow-agent: invalid configuration: ${err.message}\n`);
    return 2;
  }
  // OpenTelemetry is loaded only to export traces (src/lib/trace-context.ts says what it saves).
  const tracing = tracingConfigured()
    ? await (await import('../lib/tracing.ts')).startTracing('agentflow-agent')
    : undefined;
  if (tracing) log.info('Exporting traces over OTLP (OTEL_EXPORTER_OTLP_* variables)');
  try {
    await agent.start();
  } catch {
    await tracing?.shutdown().catch(() => undefined);
    return 1; // the agent logged why
  }
  // The agent's modules and the handlers' are loaded by now: write the compile cache bin/from-source.mjs enables
  // (a no-op without it) rather than only at exit, which a killed pod never reaches.
  flushCompileCache();
  let signalled = false;
  const onSignal = () => {
    signalled = true;
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  await agent.untilStopped();
  if (!signalled) {
    // The dispatcher drained us (a rollout or scale-down): the operator deletes the pod next. Exiting
    // now would only make the kubelet restart the container and rejoin the pool, so wait for SIGTERM.
    log.info('Drained; waiting for the pod to be deleted');
    await new Promise<void>((resolve) => {
      process.once('SIGTERM', () => resolve());
      process.once('SIGINT', () => resolve());
    });
  }
  await tracing?.shutdown().catch((err: Error) => log.warn('Could not export the last spans', { error: err }));
  return 0;
}
