#!/usr/bin/env node
// agentflow: the one entry point of the container image. `agentflow operator
// ...` runs the operator, `agentflow agent ...` an agent (each --help lists
// its flags).
import { main as agent } from '../agent/cli.ts';
import { main as operator } from '../operator/cli.ts';

const USAGE = `Usage: agentflow <command> [flags]

Commands:
  operator   run the operator (leader election, controllers, dispatcher)
  agent      run an agent of a pool (what agent pods run)

Run "agentflow <command> --help" for its flags.
`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'operator':
      return operator(rest);
    case 'agent':
      return agent(rest);
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(USAGE);
      return command === undefined ? 2 : 0;
    default:
      process.stderr.write(`agentflow: unknown command "${command}"\n\n${USAGE}`);
      return 2;
  }
}

process.exit(await main(process.argv.slice(2)));
