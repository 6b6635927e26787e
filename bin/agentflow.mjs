#!/usr/bin/env node
// agentflow (also kubectl-agentflow, so `kubectl agentflow` runs it): src/cli/main.ts, run from source (see from-source.mjs).
import { runFromSource } from './from-source.mjs';

await runFromSource('agentflow', '../src/cli/main.ts');
