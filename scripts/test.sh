#!/usr/bin/env bash
# The whole test gate, as `npm test` and CI run it: typecheck, lint, then the
# unit, integration and e2e suites (vitest's summary is the last thing printed).
# Extra arguments go to vitest, e.g. `npm test -- --project unit`.
set -euo pipefail
echo "== typecheck"
tsc -p tsconfig.json --noEmit
tsc -p ui/tsconfig.json --noEmit # the web UI (DOM types; bundled by ui/build.ts)
echo "== lint"
biome check --reporter=summary .
echo "== vitest"
exec vitest run "$@"
