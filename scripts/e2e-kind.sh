#!/usr/bin/env bash
# The e2e suite on a kind cluster, where Docker exists (not on the CI machine,
# which has none): builds the image, loads it into kind, and runs test/e2e
# against it (helm install with the bundled etcd — real DNS and Services there
# — the README example to Succeeded, helm uninstall).
#   scripts/e2e-kind.sh [cluster-name]     (needs docker, kind, kubectl, helm)
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:-agentflow-e2e}"
image="ghcr.io/agentflow/agentflow:$(node -p 'require("./package.json").version')"
for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "e2e-kind: $tool is required" >&2; exit 2; }
done

kind get clusters | grep -qx "$name" || kind create cluster --name "$name" --wait 120s
docker build -t "$image" .
kind load docker-image "$image" --name "$name"
export KUBECONFIG
KUBECONFIG="$(mktemp)"
kind get kubeconfig --name "$name" >"$KUBECONFIG"

# The same e2e suite as on the local control plane, pointed at this cluster: it helm-installs the
# chart (bundled etcd, image from the nodes), runs the README example and uninstalls.
AGENTFLOW_E2E_KUBECONFIG="$KUBECONFIG" npm run test:e2e
echo "e2e-kind: the e2e suite passed on kind cluster $name"
