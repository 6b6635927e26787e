#!/usr/bin/env bash
# Builds the real control-plane binaries the test harness runs: kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl and etcd (from the wrapper
# module in test/cluster/gomod, pinned to one Kubernetes release), helm, and the
# lincheck linearizability checker (tools/lincheck, keyed by its content hash),
# the promlint exposition-format linter (tools/promlint, keyed the same way)
# and etcdutl (tools/etcdutl pins it), which `agentflow restore` runs, and the
# OpenTelemetry Collector the tests receive spans with (test/cluster/otelcol), and CoreDNS
# (test/cluster/coredns) with kubelet and kube-proxy for real nodes, and kube-router's
# network-policy firewall (test/cluster/kube-router).
# Results are cached outside git in ~/.cache/agentflow/bin/<component>-<version>/
# so later runs skip the build entirely; each binary is written to a temporary
# name and renamed, so an interrupted build never leaves a broken binary.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/versions.sh
source "$ROOT/scripts/versions.sh"
CACHE="${AGENTFLOW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentflow}"
export GOFLAGS="-mod=mod -trimpath"
export CGO_ENABLED=0

kube_dir="$CACHE/bin/kube-$KUBE_VERSION"
helm_dir="$CACHE/bin/helm-$HELM_VERSION"

build_kube() {
  local missing=()
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd; do
    [[ -x "$kube_dir/$b" ]] || missing+=("$b")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  mkdir -p "$kube_dir"
  local major="${KUBE_VERSION#v}"; major="${major%%.*}"
  local minor="${KUBE_VERSION#v*.}"; minor="${minor%%.*}"
  local ld="-s -w"
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ld+=" -X '$pkg.gitVersion=$KUBE_VERSION' -X '$pkg.gitMajor=$major' -X '$pkg.gitMinor=$minor'"
    ld+=" -X '$pkg.gitTreeState=clean' -X '$pkg.buildDate=1970-01-01T00:00:00Z'"
  done
  cd "$ROOT/test/cluster/gomod"
  for b in "${missing[@]}"; do
    local pkg="k8s.io/kubernetes/cmd/$b"
    [[ $b == etcd ]] && pkg="go.etcd.io/etcd/server/v3"
    echo "building $b ($KUBE_VERSION module graph)..." >&2
    local t0=$SECONDS
    go build -ldflags "$ld" -o "$kube_dir/$b.tmp" "$pkg"
    mv "$kube_dir/$b.tmp" "$kube_dir/$b"
    echo "built $b in $((SECONDS - t0))s" >&2
  done
}

build_helm() {
  [[ -x "$helm_dir/helm" ]] && return 0
  mkdir -p "$helm_dir"
  echo "building helm $HELM_VERSION..." >&2
  local t0=$SECONDS
  # helm has carried no replace directives since 3.7, so go install works as is.
  GOFLAGS=-trimpath GOBIN="$helm_dir" go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  echo "built helm in $((SECONDS - t0))s" >&2
}

# One of tools/<name> (lincheck, promlint), into bin/<name>-<content hash>/. -mod=readonly: the
# committed go.sum must already cover what it is built from (porcupine, client_golang).
build_go_tool() {
  local name=$1 dir
  dir="$CACHE/bin/$name-$(go_tool_version "$ROOT" "$name")"
  [[ -x "$dir/$name" ]] && return 0
  mkdir -p "$dir"
  local t0=$SECONDS
  (cd "$ROOT/tools/$name" && GOFLAGS="-mod=readonly -trimpath -buildvcs=false" go build -o "$dir/$name.tmp.$$" .)
  mv "$dir/$name.tmp.$$" "$dir/$name"
  echo "built $name in $((SECONDS - t0))s" >&2
}

build_etcdutl() {
  local dir="$CACHE/bin/etcdutl-$ETCDUTL_VERSION"
  [[ -x "$dir/etcdutl" ]] && return 0
  mkdir -p "$dir"
  local t0=$SECONDS
  # -mod=readonly: tools/etcdutl/go.sum pins every module it is built from.
  (cd "$ROOT/tools/etcdutl" && GOFLAGS="-mod=readonly -trimpath -buildvcs=false" go build -ldflags "-s -w" -o "$dir/etcdutl.tmp.$$" go.etcd.io/etcd/etcdutl/v3)
  mv "$dir/etcdutl.tmp.$$" "$dir/etcdutl"
  echo "built etcdutl in $((SECONDS - t0))s" >&2
}

# A binary built from the pinned module in test/cluster/<name> (otelcol: the OpenTelemetry
# Collector's OTLP receiver and file exporter; coredns: cluster DNS for real nodes; kube-router:
# their NetworkPolicies), into
# bin/<name>-<build id>/. -mod=readonly: its committed go.sum covers the build.
# Usage: build_pinned_module NAME BUILD_ID MODULE VERSION (go.mod must require MODULE VERSION).
build_pinned_module() {
  local name=$1 id=$2 module=$3 version=$4
  local src="$ROOT/test/cluster/$name" dir="$CACHE/bin/$name-$id"
  [[ -x "$dir/$name" ]] && return 0
  grep -qE "^(require[[:space:]]+|[[:space:]]+)${module//./\\.} ${version//./\\.}\$" "$src/go.mod" || {
    echo "test/cluster/$name/go.mod does not require $module $version (scripts/versions.sh)" >&2
    exit 1
  }
  mkdir -p "$dir"
  echo "building $name $version (first run only; minutes)..." >&2
  local t0=$SECONDS
  (cd "$src" && GOFLAGS="-mod=readonly -trimpath -buildvcs=false" go build -ldflags "-s -w" -o "$dir/$name.tmp.$$" .)
  mv "$dir/$name.tmp.$$" "$dir/$name"
  echo "built $name in $((SECONDS - t0))s" >&2
}

build_kube
build_helm
build_go_tool lincheck
build_go_tool promlint
build_etcdutl
build_pinned_module otelcol "$(otelcol_build_id "$ROOT")" go.opentelemetry.io/collector/otelcol "$OTELCOL_VERSION"
build_pinned_module coredns "$(coredns_build_id "$ROOT")" github.com/coredns/coredns "$COREDNS_VERSION"
build_pinned_module kube-router "$(kube_router_build_id "$ROOT")" github.com/cloudnativelabs/kube-router/v2 "$KUBE_ROUTER_VERSION"
