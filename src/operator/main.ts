#!/usr/bin/env node
// agentflow-operator: what the operator Deployment runs (see cli.ts).
import { main } from './cli.ts';

process.exit(await main(process.argv.slice(2)));
