#!/usr/bin/env node
// agentflow-agent: what agent pods run (see cli.ts).
import { main } from './cli.ts';

// Exit explicitly: a handler's leftover timers or sockets must not keep a drained pod alive.
process.exit(await main(process.argv.slice(2)));
