// The user-facing commands of `agentflow` (also `kubectl agentflow`): argument
// parsing and help by commander, each command's work in commands/*.ts, loaded
// when it runs. src/cli/main.ts hands every command line here except those of
// agentflow's own processes (operator, agent, backup, restore), which it runs
// itself: they are listed in the help, not parsed here.
import { basename } from 'node:path';
import { Argument, Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { VERSION_LINE } from '../../lib/version.ts';
import { collectParam, parseDuration, positiveInt } from './args.ts';
import type { SubmitOptions } from './commands/submit.ts';
import { describeFailure, EXIT_OK, EXIT_USAGE, UsageError } from './errors.ts';
import { type Io, processIo } from './io.ts';
import type { Cluster, ConnectionOptions } from './kube.ts';

/** Shells `completion` writes a script for. */
export const SHELLS = ['bash', 'zsh', 'fish'] as const;
export type Shell = (typeof SHELLS)[number];

/** agentflow's own processes: main.ts runs them; here they only appear in the help. */
export const PROCESS_COMMANDS = {
  operator: 'run the operator',
  agent: 'run an agent of a pool (what agent pods run)',
  backup: "snapshot agentflow's etcd, or check a snapshot",
  restore: 'restore a snapshot into a fresh etcd data directory',
} as const;

const outputOption = (choices: readonly string[], what = 'output format') =>
  new Option('-o, --output <format>', what).choices(choices);

/** The program name as the user typed it: `kubectl agentflow` when kubectl ran the plugin. */
export function programName(argv1 = process.argv[1] ?? ''): string {
  return basename(argv1).startsWith('kubectl-') ? 'kubectl agentflow' : 'agentflow';
}

interface ScopeOpts {
  workflow?: string;
  pool?: string;
}

interface Run {
  code: number;
}

type GlobalOpts = ConnectionOptions & Record<string, unknown>;

/**
 * The commander program. Actions store their exit code in `run`; errors are
 * thrown (commander's own as CommanderError, with exitOverride).
 */
export function buildProgram(io: Io, run: Run, name = programName()): Command {
  const program = new Command(name);
  program
    .description(
      "Run and follow agentflow Workflows with your kubeconfig's credentials: submit, watch, logs, retry and more.",
    )
    .exitOverride()
    .configureOutput({
      writeOut: (s) => io.out(s),
      writeErr: (s) => io.err(s),
      outputError: (s, write) => write(s),
    })
    .showHelpAfterError(true)
    .configureHelp({ showGlobalOptions: true })
    .addOption(new Option('-n, --namespace <namespace>', "namespace (default: the kubeconfig context's, else default)"))
    .addOption(new Option('--context <name>', 'kubeconfig context to use (default: its current-context)'))
    .addOption(new Option('--kubeconfig <file>', 'kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)'))
    .addOption(
      new Option('--request-timeout <duration>', 'give up on a request after this long (30s, 1m; 0: no limit)')
        .argParser(parseDuration)
        .default(30_000, '30s'),
    )
    .option('--version', "print agentflow's version")
    .hook('preAction', (_program, action) => {
      // main.ts answers a leading --version; this one came after other flags or a command.
      if (action.optsWithGlobals<{ version?: boolean }>().version) {
        io.out(VERSION_LINE);
        throw new CommanderError(EXIT_OK, 'commander.version', VERSION_LINE);
      }
    });

  /** Connects with the program-level flags, runs `fn`, closes the connection. */
  const withCluster = async (cmd: Command, fn: (c: Cluster) => Promise<number>): Promise<void> => {
    const { connect } = await import('./kube.ts');
    const g = cmd.optsWithGlobals<GlobalOpts>();
    const cluster = await connect(connection(g));
    try {
      run.code = await fn(cluster);
    } finally {
      cluster.close();
    }
  };
  /** A user command; `summary` is its line in `--help`, `description` heads its own help. */
  const sub = (nameAndArgs: string, summary: string, description = summary) => {
    const cmd = program.command(nameAndArgs).summary(summary).description(description);
    cmd.showHelpAfterError(`(run "${name} ${cmd.name()} --help" for its usage)`);
    return cmd;
  };

  sub(
    'submit',
    'create a Workflow from a file or a WorkflowTemplate',
    'Create a Workflow from a YAML or JSON file, or one that runs a WorkflowTemplate (--from).',
  )
    .option('-f, --filename <file>', 'the Workflow, YAML or JSON ("-": stdin)')
    .option(
      '--from <workflowtemplate/name>',
      "a Workflow named <name>-<random> that runs the template, its -p inputs checked against the template's parameters",
    )
    .option(
      '-p, --param <key=value>',
      "set spec.inputs.<key> (read as a YAML scalar; as typed for a template's string parameter); repeatable",
      collectParam,
    )
    .option('--generate-name', 'create it as metadata.generateName "<name>-" (a new name each time)')
    .option('-w, --watch', 'then follow it as watch does (and exit as watch does)')
    .addHelpText(
      'after',
      `\nExamples:\n  ${name} submit -f examples/hello.yaml --watch\n  ${name} submit -f wf.yaml -p topic=rust -p count=3 --generate-name\n  ${name} submit --from workflowtemplate/research -p topic=etcd --watch`,
    )
    .action(async function (this: Command) {
      const o = this.opts<SubmitOptions>();
      if ((o.filename === undefined) === (o.from === undefined))
        throw new UsageError('submit takes exactly one of -f <file> and --from workflowtemplate/<name>');
      const { submit } = await import('./commands/submit.ts');
      run.code = await submit(connection(this.optsWithGlobals<GlobalOpts>()), io, o);
    });

  sub(
    'watch',
    'follow a Workflow live until it finishes',
    'Follow a Workflow until it finishes: exit 0 if it Succeeded, 1 if it Failed or was Cancelled.',
  )
    .argument('<name>', 'the Workflow')
    .addHelpText(
      'after',
      '\nOn a terminal: a live view of the task tree, redrawn in place. Otherwise one line per change:\n  <time> <task> <phase> [attempt N] [agent X] [message]',
    )
    .action(async function (this: Command, wf: string) {
      const { watchWorkflow } = await import('./watch.ts');
      await withCluster(this, (c) => watchWorkflow(c, wf, io));
    });

  sub('list', 'list Workflows', 'List Workflows: NAME PHASE PROGRESS AGE (-o wide: STARTED DURATION MESSAGE).')
    .alias('ls')
    .option('-A, --all-namespaces', 'in every namespace')
    .addOption(outputOption(['json', 'yaml', 'name', 'wide']))
    .action(async function (this: Command) {
      const o = this.opts<{ allNamespaces?: boolean; output?: 'json' | 'yaml' | 'name' | 'wide' }>();
      const { list } = await import('./commands/read.ts');
      await withCluster(this, (c) => list(c, io, o));
    });

  sub('get', "a Workflow's summary", "A Workflow's summary: phase, progress, duration, message.")
    .argument('<name>', 'the Workflow')
    .addOption(outputOption(['json', 'yaml', 'name']))
    .action(async function (this: Command, wf: string) {
      const o = this.opts<{ output?: 'json' | 'yaml' | 'name' }>();
      const { get } = await import('./commands/read.ts');
      await withCluster(this, (c) => get(c, io, wf, o));
    });

  sub(
    'describe',
    "a Workflow's summary and its tasks",
    "A Workflow's summary and its tasks: TASK PHASE ATTEMPTS AGENT NODE START DURATION ERROR.",
  )
    .argument('<name>', 'the Workflow')
    .action(async function (this: Command, wf: string) {
      const { describe } = await import('./commands/read.ts');
      await withCluster(this, (c) => describe(c, io, wf));
    });

  sub('output', "a task's output", "A task's output, as JSON (-o yaml: YAML).")
    .argument('<name>', 'the Workflow')
    .argument('<task>', 'the task instance (task, task.<index> for a forEach item)')
    .addOption(outputOption(['json', 'yaml']).default('json'))
    .action(async function (this: Command, wf: string, task: string) {
      const o = this.opts<{ output?: 'json' | 'yaml' }>();
      const { output } = await import('./commands/read.ts');
      await withCluster(this, (c) => output(c, io, wf, task, o));
    });

  sub('logs', "a task's log, or every task's", "A task's log; without TASK every task's, each line prefixed [task].")
    .argument('<name>', 'the Workflow')
    .argument('[task]', 'the task instance')
    .option('-f, --follow', 'stream new lines as they come, until the task (or the workflow) finishes')
    .option('--attempt <n>', 'the attempt to read (default: the latest)', positiveInt)
    .option('--timestamps', 'begin each line with its time (RFC 3339)')
    .option('--stream', "the task's streamed output (ctx.stream) exactly as streamed, instead of its log lines")
    .addHelpText(
      'after',
      `\nExamples:\n  ${name} logs hello greet -f\n  ${name} logs hello\n  ${name} logs --stream hello greet -f`,
    )
    .action(async function (this: Command, wf: string, task: string | undefined) {
      const o = this.opts<{ follow?: boolean; attempt?: number; timestamps?: boolean; stream?: boolean }>();
      if (o.attempt !== undefined && task === undefined) {
        throw new UsageError('--attempt needs a TASK: attempts are numbered per task');
      }
      if (o.stream && task === undefined) throw new UsageError("--stream needs a TASK: it prints one task's output");
      if (o.stream && o.timestamps)
        throw new UsageError('--stream and --timestamps: streamed output has no line times');
      const { logs } = await import('./commands/logs.ts');
      await withCluster(this, (c) => logs(c, io, wf, task, o));
    });

  sub('cancel', 'cancel a Workflow', 'Cancel a running Workflow: its running tasks are cancelled, nothing new starts.')
    .argument('<name>', 'the Workflow')
    .action(async function (this: Command, wf: string) {
      const { cancel } = await import('./commands/control.ts');
      await withCluster(this, (c) => cancel(c, io, wf));
    });

  sub(
    'suspend',
    'stop starting tasks of a Workflow',
    'Stop dispatching new tasks of a Workflow (spec.suspend); running ones finish.',
  )
    .argument('<name>', 'the Workflow')
    .action(async function (this: Command, wf: string) {
      const { setSuspended } = await import('./commands/control.ts');
      await withCluster(this, (c) => setSuspended(c, io, wf, true));
    });

  sub(
    'resume',
    'resume a suspended Workflow',
    'Dispatch the tasks of a suspended Workflow again (spec.suspend: false).',
  )
    .argument('<name>', 'the Workflow')
    .action(async function (this: Command, wf: string) {
      const { setSuspended } = await import('./commands/control.ts');
      await withCluster(this, (c) => setSuspended(c, io, wf, false));
    });

  const answerTimeout = () =>
    new Option('--timeout <duration>', "how long to wait for the operator's answer")
      .argParser(parseDuration)
      .default(60_000, '1m');

  sub(
    'retry',
    'run the failed tasks of a run again',
    'Run the failed and cancelled tasks of a Failed or Cancelled Workflow again, keeping what succeeded.',
  )
    .argument('<name>', 'the Workflow')
    .option('-w, --watch', 'then follow it as watch does')
    .addOption(answerTimeout())
    .action(async function (this: Command, wf: string) {
      const o = this.opts<{ watch?: boolean; timeout: number }>();
      const { retry } = await import('./commands/control.ts');
      await withCluster(this, (c) => retry(c, io, wf, { ...(o.watch && { watch: true }), timeoutMs: o.timeout }));
    });

  sub(
    'resubmit',
    'run a Workflow again as a new copy',
    'Run a Workflow again from scratch, as a copy under a new name.',
  )
    .argument('<name>', 'the Workflow')
    .option('-w, --watch', 'then follow the copy as watch does')
    .addOption(answerTimeout())
    .action(async function (this: Command, wf: string) {
      const o = this.opts<{ watch?: boolean; timeout: number }>();
      const { resubmit } = await import('./commands/control.ts');
      await withCluster(this, (c) => resubmit(c, io, wf, { ...(o.watch && { watch: true }), timeoutMs: o.timeout }));
    });

  for (const [verb, decision, done] of [
    ['approve', 'Approve', 'the workflow goes on past it'],
    ['reject', 'Reject', 'the task fails with your message, and so does the run'],
  ] as const) {
    sub(
      `${verb}`,
      `${verb} a task waiting for approval`,
      `${verb[0]?.toUpperCase()}${verb.slice(1)} an approval task of a Workflow: ${done}. Takes update on workflows/approval (data.agentflow.io) and, when the task lists approvers, being one.`,
    )
      .argument('<name>', 'the Workflow')
      .argument('<task>', 'the approval task')
      .option('-m, --message <text>', 'why (kept in the status, the output and the audit chain)')
      .addHelpText(
        'after',
        `\nExample:\n  ${name} ${verb} release publish -m "${verb === 'approve' ? 'LGTM' : 'not this week'}"`,
      )
      .action(async function (this: Command, wf: string, task: string) {
        const o = this.opts<{ message?: string }>();
        const { decide } = await import('./commands/approvals.ts');
        await withCluster(this, (c) => decide(c, io, wf, task, decision, o));
      });
  }

  sub(
    'approvals',
    'the tasks of a Workflow waiting for approval',
    'The approval tasks of a Workflow waiting for a decision: TASK DEADLINE ON-TIMEOUT MESSAGE.',
  )
    .argument('<name>', 'the Workflow')
    .addOption(outputOption(['json', 'yaml']))
    .action(async function (this: Command, wf: string) {
      const o = this.opts<{ output?: 'json' | 'yaml' }>();
      const { approvals } = await import('./commands/approvals.ts');
      await withCluster(this, (c) => approvals(c, io, wf, o));
    });

  sub(
    'signal',
    'send a signal to a running Workflow',
    'Send a signal to a running Workflow: the next ctx.waitForSignal(SIGNAL) of one of its tasks takes it (it waits in etcd until one does). Takes update on workflows/signal.',
  )
    .argument('<name>', 'the Workflow')
    .argument('<signal>', 'the signal name')
    .option('-d, --data <json>', 'the data (JSON, else the text as a string; default null)')
    .addHelpText('after', `\nExample:\n  ${name} signal research feedback --data '{"more": "sources"}'`)
    .action(async function (this: Command, wf: string, sig: string) {
      const o = this.opts<{ data?: string }>();
      const { signal } = await import('./commands/approvals.ts');
      await withCluster(this, (c) => signal(c, io, wf, sig, o));
    });

  sub(
    'signals',
    'the signals sent to a Workflow',
    'The signals sent to a Workflow: SIGNAL ID SENT-BY SENT TAKEN-BY DATA.',
  )
    .argument('<name>', 'the Workflow')
    .addOption(outputOption(['json', 'yaml']))
    .action(async function (this: Command, wf: string) {
      const o = this.opts<{ output?: 'json' | 'yaml' }>();
      const { signals } = await import('./commands/approvals.ts');
      await withCluster(this, (c) => signals(c, io, wf, o));
    });

  sub(
    'agents',
    'the agents of a pool, or of every pool',
    "The agents of a pool (every pool's without POOL): NAME POOL NODE SLOTS IN-FLIGHT FREE DRAINING HANDLERS.",
  )
    .argument('[pool]', 'the AgentPool')
    .addOption(outputOption(['json', 'yaml', 'wide']))
    .action(async function (this: Command, pool: string | undefined) {
      const o = this.opts<{ output?: 'json' | 'yaml' | 'wide' }>();
      const { agents } = await import('./commands/agents.ts');
      await withCluster(this, (c) => agents(c, io, pool, o));
    });

  const revisionOption = () =>
    new Option('--expected-revision <n>', 'only if the key is still at this revision (0: only if absent)').argParser(
      (v: string) => {
        if (!/^\d+$/.test(v)) throw new InvalidArgumentError('a whole number ≥ 0');
        return Number(v);
      },
    );
  const scoped = (cmd: Command) =>
    cmd
      .option('--workflow <name>', "the Workflow's state (default: the namespace's)")
      .option('--pool <name>', "the AgentPool's state (default: the namespace's)");
  /** SIGINT ends a command that runs until interrupted (a watch, the UI proxy) with exit 0. */
  const untilInterrupted = () => {
    const abort = new AbortController();
    const stop = () => abort.abort();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    return abort.signal;
  };
  const state = sub(
    'state',
    'shared state of a workflow, a pool or the namespace',
    "The shared state agents read and write (ctx.state): a Workflow's (--workflow), an AgentPool's (--pool) or the namespace's.",
  );
  scoped(state.command('get').description('print the value of a key'))
    .argument('<key>', 'the key')
    .addOption(outputOption(['json', 'yaml']))
    .action(async function (this: Command, key: string) {
      const o = this.opts<ScopeOpts & { output?: 'json' | 'yaml' }>();
      const m = await import('./commands/state.ts');
      await withCluster(this, (c) => m.stateGet(c, io, m.scopeOf(o), key, o));
    });
  scoped(state.command('put').description('write a key (VALUE as JSON, else as a string)'))
    .argument('<key>', 'the key')
    .argument('<value>', 'the value: JSON (42, true, {"a":1}) or any text')
    .addOption(revisionOption())
    .action(async function (this: Command, key: string, value: string) {
      const o = this.opts<ScopeOpts & { expectedRevision?: number }>();
      const m = await import('./commands/state.ts');
      await withCluster(this, (c) => m.statePut(c, io, m.scopeOf(o), key, value, o));
    });
  scoped(state.command('delete').description('delete a key'))
    .argument('<key>', 'the key')
    .addOption(revisionOption())
    .action(async function (this: Command, key: string) {
      const o = this.opts<ScopeOpts & { expectedRevision?: number }>();
      const m = await import('./commands/state.ts');
      await withCluster(this, (c) => m.stateDelete(c, io, m.scopeOf(o), key, o));
    });
  scoped(state.command('list').description('every key (under --prefix): KEY REVISION VERSION VALUE'))
    .option('--prefix <prefix>', 'only keys under this prefix')
    .addOption(outputOption(['json', 'yaml']))
    .action(async function (this: Command) {
      const o = this.opts<ScopeOpts & { prefix?: string; output?: 'json' | 'yaml' }>();
      const m = await import('./commands/state.ts');
      await withCluster(this, (c) => m.stateList(c, io, m.scopeOf(o), o));
    });
  scoped(state.command('watch').description('print each change as it happens, until interrupted'))
    .argument('[key]', 'only this key')
    .option('--prefix <prefix>', 'only keys under this prefix')
    .addOption(outputOption(['json']))
    .action(async function (this: Command, key: string | undefined) {
      const o = this.opts<ScopeOpts & { prefix?: string; output?: 'json' }>();
      const m = await import('./commands/state.ts');
      const signal = untilInterrupted();
      await withCluster(this, (c) =>
        m.stateWatch(
          c,
          io,
          m.scopeOf(o),
          { ...(key && { key }), ...(o.prefix && { prefix: o.prefix }), ...(o.output && { output: o.output }) },
          signal,
        ),
      );
    });

  const cache = sub(
    'cache',
    "the namespace's memoized task outputs",
    "The namespace's memoization cache: the outputs of tasks with memoize, which a later run takes instead of running the task. Listing takes list on workflows, clearing delete on workflows (agentflow.io).",
  );
  cache
    .command('list')
    .description('every memoized output, newest first: KEY WORKFLOW TASK ATTEMPT AGE SIZE')
    .addOption(outputOption(['table', 'json', 'yaml']).default('table'))
    .action(async function (this: Command) {
      const o = this.opts<{ output?: 'table' | 'json' | 'yaml' }>();
      const { cacheList } = await import('./commands/cache.ts');
      await withCluster(this, (c) => cacheList(c, io, o));
    });
  cache
    .command('clear')
    .description('drop one memoized output (--key) or every one of the namespace (--all): its task runs again')
    .option('--key <key>', 'the memoization key of the entry to drop (as `cache list -o json` prints it)')
    .option('--all', 'drop every entry of the namespace')
    .addHelpText(
      'after',
      `\nExamples:\n  ${name} cache clear --key summary-https://example.com\n  ${name} cache clear --all -n research`,
    )
    .action(async function (this: Command) {
      const o = this.opts<{ key?: string; all?: boolean }>();
      const m = await import('./commands/cache.ts');
      const target = m.clearTarget(o);
      await withCluster(this, (c) => m.cacheClear(c, io, target));
    });

  sub('audit', "a workflow's audit log", "A Workflow's hash-chained audit log.")
    .command('verify')
    .description('check the chain: every entry present, unaltered, linked to the one before (exit 1 if not)')
    .argument('<name>', 'the Workflow')
    .addOption(outputOption(['json', 'yaml']))
    .action(async function (this: Command, wf: string) {
      const o = this.opts<{ output?: 'json' | 'yaml' }>();
      const { auditVerify } = await import('./commands/state.ts');
      await withCluster(this, (c) => auditVerify(c, io, wf, o));
    });

  sub(
    'ui',
    'open the web UI with your credentials',
    "Serve the web UI on 127.0.0.1 through a local proxy that adds your kubeconfig's credentials; open the URL it prints (only the browser holding its token gets in).",
  )
    .option('--port <port>', 'the local port (default: a free one)', (v: string) => {
      if (!/^\d+$/.test(v) || Number(v) > 65535) throw new InvalidArgumentError('a port number, 0-65535');
      return Number(v);
    })
    .option('--open', 'open the URL in your browser (xdg-open)')
    .action(async function (this: Command) {
      const o = this.optsWithGlobals<GlobalOpts & { port?: number; open?: boolean }>();
      const { runUiProxy } = await import('../ui-proxy.ts');
      const signal = untilInterrupted();
      const proxy = await runUiProxy({
        ...(o.kubeconfig !== undefined && { kubeconfig: o.kubeconfig }),
        ...(o.context !== undefined && { context: o.context }),
        ...(o.namespace !== undefined && { namespace: o.namespace }),
        ...(o.port !== undefined && { port: o.port }),
        ...(o.open && { open: true }),
        out: (line) => io.out(`${line}\n`),
        signal,
      });
      await new Promise<void>((resolve) => {
        if (signal.aborted) resolve();
        signal.addEventListener('abort', () => resolve(), { once: true });
      });
      await proxy.close();
      run.code = EXIT_OK;
    });

  sub('completion', 'print a shell completion script', 'Print a completion script for bash, zsh or fish.')
    .addArgument(new Argument('<shell>', 'the shell').choices(SHELLS))
    .addHelpText(
      'after',
      `\nLoad it:\n  bash:  source <(${name} completion bash)\n  zsh:   source <(${name} completion zsh)\n  fish:  ${name} completion fish | source`,
    )
    .action(async (shell: Shell) => {
      const { completionScript } = await import('./completion.ts');
      io.out(completionScript(program, shell));
      run.code = EXIT_OK;
    });

  for (const [cmd, description] of Object.entries(PROCESS_COMMANDS)) {
    program
      .command(cmd)
      .description(description)
      .helpGroup("agentflow's own processes (their flags: <command> --help):")
      .allowUnknownOption()
      .allowExcessArguments()
      .action(function (this: Command) {
        // main.ts runs these when they come first; reached here only after a program-level flag.
        throw new UsageError(`"${cmd}" must come first: ${name} ${cmd} [flags]`);
      });
  }
  return program;
}

function connection(g: GlobalOpts): ConnectionOptions {
  return {
    ...(g.namespace !== undefined && { namespace: g.namespace }),
    ...(g.context !== undefined && { context: g.context }),
    ...(g.kubeconfig !== undefined && { kubeconfig: g.kubeconfig }),
    ...(g.requestTimeout !== undefined && { requestTimeout: g.requestTimeout }),
  };
}

/** Exit codes for commander's own exits: help and version 0, parse errors 2. */
function commanderExit(err: CommanderError): number {
  if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version') return EXIT_OK;
  if (err.code === 'commander.help') return err.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
  return EXIT_USAGE;
}

/** The help text, as `agentflow --help` prints it. */
export function helpText(io: Io = processIo()): string {
  return buildProgram(io, { code: 0 }).helpInformation();
}

/** Runs one command line (without the node and script arguments); resolves with the exit code. */
export async function main(argv: string[], io: Io = processIo()): Promise<number> {
  const run: Run = { code: EXIT_OK };
  const program = buildProgram(io, run);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return run.code;
  } catch (err) {
    if (err instanceof CommanderError) return commanderExit(err);
    const failure = describeFailure(err);
    io.err(failure.text);
    return failure.exitCode;
  }
}
