#!/usr/bin/env bash
# Installs everything agentflow needs that a fresh machine lacks, into ~/.cache/agentflow
# (outside the work tree): Node >= 22, the npm dependencies, and the Go-built control-plane
# binaries (kube-apiserver, kube-controller-manager, kubectl, etcd, helm, lincheck, promlint, and
# otelcol, the OpenTelemetry Collector the tests receive spans with).
# Idempotent and quick when everything is already there. Source it to also get
# the PATH it sets up, or run it.
set -euo pipefail
AGENTFLOW_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/versions.sh
source "$AGENTFLOW_ROOT/scripts/versions.sh"
# Outside the work tree so fresh clones (CI) reuse the expensive Go builds.
AGENTFLOW_CACHE="${AGENTFLOW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentflow}"
mkdir -p "$AGENTFLOW_CACHE"

log() { echo "setup: $*" >&2; }

# The node version as MAJOR*1000+MINOR (22.18 -> 22018), 0 when there is none.
node_version() { "${1:-node}" -p 'const [a, b] = process.versions.node.split(".").map(Number); a * 1000 + b' 2>/dev/null || echo 0; }

# Debian packages the harness shells out to, as "command:package" (chromium: the web UI's browser test;
# tmux: the CLI's terminal view; zsh and fish: the CLI's completion scripts run in each shell;
# containerd, runc, the CNI plugins, buildah, a static busybox and debootstrap: real nodes and their
# images, test/cluster/real-node.ts and node-images.ts).
APT_NEEDS=(openssl:openssl chromium:chromium tmux:tmux zsh:zsh fish:fish containerd:containerd runc:runc
  /usr/lib/cni/bridge:containernetworking-plugins buildah:buildah /bin/busybox:busybox-static debootstrap:debootstrap
  /usr/sbin/ipset:ipset)

ensure_apt_packages() {
  local missing=()
  for pair in "${APT_NEEDS[@]}"; do
    local cmd="${pair%%:*}"
    if [[ $cmd == /* ]]; then [[ -x $cmd ]] || missing+=("${pair#*:}"); else command -v "$cmd" >/dev/null || missing+=("${pair#*:}"); fi
  done
  [[ ${#missing[@]} -eq 0 ]] && return
  if [[ $(id -u) -ne 0 ]]; then
    log "missing Debian packages: ${missing[*]} (install them with apt-get as root)"
    exit 1
  fi
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

ensure_node() {
  local local_node="$AGENTFLOW_CACHE/node/bin/node"
  if [[ -x "$local_node" ]]; then
    export PATH="$AGENTFLOW_CACHE/node/bin:$PATH"
    return
  fi
  if command -v node >/dev/null && (( $(node_version) >= NODE_MIN_MAJOR * 1000 + NODE_MIN_MINOR )); then
    return
  fi
  command -v npm >/dev/null || { log "npm is needed to install Node >= $NODE_MIN_MAJOR.$NODE_MIN_MINOR (apt-get install npm)"; exit 1; }
  log "node $(node --version 2>/dev/null || echo missing) is older than $NODE_MIN_MAJOR.$NODE_MIN_MINOR; installing $NODE_PACKAGE from the npm registry"
  local dir="$AGENTFLOW_CACHE/node-pkg"
  rm -rf "$dir" && mkdir -p "$dir"
  npm install --prefix "$dir" --no-save --no-package-lock --no-audit --no-fund --loglevel=error "$NODE_PACKAGE" >&2
  mkdir -p "$AGENTFLOW_CACHE/node/bin"
  ln -sf "$dir/node_modules/${NODE_PACKAGE%@*}/bin/node" "$local_node"
  export PATH="$AGENTFLOW_CACHE/node/bin:$PATH"
  log "using node $(node --version)"
}

ensure_npm_deps() {
  local stamp="$AGENTFLOW_ROOT/node_modules/.agentflow-lock-sha"
  local want
  want="$(sha256sum "$AGENTFLOW_ROOT/package-lock.json" | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return; fi
  log "installing npm dependencies (npm ci)"
  (cd "$AGENTFLOW_ROOT" && npm ci --no-audit --no-fund --loglevel=error >&2)
  echo "$want" >"$stamp"
}

# The web UI's bundle (ui/dist, served by the operator): built when missing or older than its sources.
ensure_ui() {
  local index="$AGENTFLOW_ROOT/ui/dist/index.html" newer
  # `npm run build:ui` builds it itself.
  [[ -n "${AGENTFLOW_BUILDING_UI:-}" || ! -f "$AGENTFLOW_ROOT/ui/build.ts" ]] && return
  if [[ -f "$index" ]]; then
    newer="$(find "$AGENTFLOW_ROOT/ui/src" "$AGENTFLOW_ROOT/ui/index.html" "$AGENTFLOW_ROOT/ui/build.ts" \
      "$AGENTFLOW_ROOT/src/api/data-api.ts" "$AGENTFLOW_ROOT/package-lock.json" -newer "$index" -print -quit)"
    [[ -z "$newer" ]] && return
  fi
  log "building the web UI into ui/dist"
  (cd "$AGENTFLOW_ROOT" && node ui/build.ts >&2)
}

ensure_go_binaries() {
  local kube="$AGENTFLOW_CACHE/bin/kube-$KUBE_VERSION" helm="$AGENTFLOW_CACHE/bin/helm-$HELM_VERSION"
  local lincheck promlint otelcol coredns kube_router
  otelcol="$AGENTFLOW_CACHE/bin/otelcol-$(otelcol_build_id "$AGENTFLOW_ROOT")"
  coredns="$AGENTFLOW_CACHE/bin/coredns-$(coredns_build_id "$AGENTFLOW_ROOT")"
  kube_router="$AGENTFLOW_CACHE/bin/kube-router-$(kube_router_build_id "$AGENTFLOW_ROOT")"
  lincheck="$AGENTFLOW_CACHE/bin/lincheck-$(go_tool_version "$AGENTFLOW_ROOT" lincheck)"
  promlint="$AGENTFLOW_CACHE/bin/promlint-$(go_tool_version "$AGENTFLOW_ROOT" promlint)"
  if [[ ! -x "$kube/kube-apiserver" || ! -x "$kube/kube-controller-manager" || ! -x "$kube/kube-scheduler" || ! -x "$kube/kubelet" || ! -x "$kube/kube-proxy" || ! -x "$kube/kubectl" || ! -x "$kube/etcd" || ! -x "$helm/helm" ]]; then
    command -v go >/dev/null || { log "Go >= 1.24 is needed to build the control-plane binaries; none found on PATH"; exit 1; }
    log "building control-plane binaries (first run only; ~10 min on 2 cores)"
    AGENTFLOW_CACHE="$AGENTFLOW_CACHE" bash "$AGENTFLOW_ROOT/scripts/build-cluster-binaries.sh"
  elif [[ ! -x "$lincheck/lincheck" || ! -x "$promlint/promlint" ]]; then
    command -v go >/dev/null || { log "Go >= 1.24 is needed to build tools/lincheck and tools/promlint; none found on PATH"; exit 1; }
    log "building lincheck and promlint (tools/ changed or first run; seconds)"
    AGENTFLOW_CACHE="$AGENTFLOW_CACHE" bash "$AGENTFLOW_ROOT/scripts/build-cluster-binaries.sh"
  elif [[ ! -x "$otelcol/otelcol" || ! -x "$coredns/coredns" || ! -x "$kube_router/kube-router" ]]; then
    command -v go >/dev/null || { log "Go >= 1.26 is needed to build the OpenTelemetry Collector, CoreDNS and kube-router (test/cluster/otelcol, coredns, kube-router); none found on PATH"; exit 1; }
    log "building otelcol $OTELCOL_VERSION, coredns $COREDNS_VERSION and kube-router $KUBE_ROUTER_VERSION (test/cluster/otelcol, coredns or kube-router changed, or first run; minutes)"
    AGENTFLOW_CACHE="$AGENTFLOW_CACHE" bash "$AGENTFLOW_ROOT/scripts/build-cluster-binaries.sh"
  fi
  export PATH="$kube:$helm:$lincheck:$promlint:$PATH"
}

ensure_apt_packages
ensure_node
ensure_npm_deps
ensure_ui
ensure_go_binaries
export AGENTFLOW_ROOT AGENTFLOW_CACHE
