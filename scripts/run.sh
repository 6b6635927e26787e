#!/usr/bin/env bash
# Runs a command with agentflow's toolchain: provisions what is missing (see
# setup.sh), puts Node >= 22, the project's node_modules/.bin and the cached
# control-plane binaries first on PATH, then execs the command.
set -euo pipefail
# shellcheck source=scripts/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
export PATH="$AGENTFLOW_ROOT/node_modules/.bin:$PATH"
exec "$@"
