#!/usr/bin/env node
// agentflow-agent, what agent pods run: src/agent/main.ts, run from source (see from-source.mjs).
import { runFromSource } from './from-source.mjs';

await runFromSource('agentflow-agent', '../src/agent/main.ts');
