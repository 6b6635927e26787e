#!/usr/bin/env bash
# npm run bench [-- --full] [-- --only throughput,latency] : runs the benchmark
# scenarios (see bench/main.ts). Needs redis-server for the BullMQ side:
# installed from Debian's package when missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v redis-server >/dev/null; then
  echo "bench: redis-server not found; installing Debian's redis-server package" >&2
  SUDO=()
  [[ $(id -u) -eq 0 ]] || SUDO=(sudo)
  "${SUDO[@]}" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq redis-server >&2
fi

# --expose-gc: the scale scenario measures the dispatcher's heap after a full GC.
exec node --expose-gc bench/main.ts "$@"
