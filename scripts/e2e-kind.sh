#!/usr/bin/env bash
# The README example on a kind cluster, where Docker exists (not on the CI
# machine, which has none): builds the image, loads it into kind, installs the
# chart with its bundled etcd (real DNS and Services there), applies
# deploy/examples/ and waits for the workflow to succeed.
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

helm upgrade --install agentflow charts/agentflow -n agentflow-system --create-namespace \
  --set image.pullPolicy=Never --wait --timeout 300s
kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -n demo -f deploy/examples/
kubectl wait -n demo workflow/research-report --for=jsonpath='{.status.phase}'=Succeeded --timeout=300s
kubectl get -n demo workflow research-report -o jsonpath='{.status.outputs.write.title}{"\n"}'
echo "e2e-kind: research-report Succeeded on kind cluster $name"
