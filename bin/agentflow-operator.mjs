#!/usr/bin/env node
// agentflow-operator, what the operator Deployment runs: src/operator/main.ts, run from source (see from-source.mjs).
import { runFromSource } from './from-source.mjs';

await runFromSource('agentflow-operator', '../src/operator/main.ts');
