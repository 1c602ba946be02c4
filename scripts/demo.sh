#!/usr/bin/env bash
# `make demo`: the quick start. Builds the tools once, starts the local
# control plane, installs the CRDs, applies the example SecureChatModel and
# shows it. `make demo-down` stops everything it started.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$HOME/.cache/securechat/bin:$HOME/.cargo/bin:$PATH"
export KUBECONFIG="$root/.securechat/kubeconfig"

tests/cluster/build-tools.sh
tests/cluster/up.sh

echo "== installing the CRDs"
kubectl apply --server-side -f charts/securechat/crds/
kubectl wait --for=condition=Established --timeout=60s crd/securechatmodels.securechat.dev crd/chatapikeys.securechat.dev

echo "== applying examples/"
kubectl create namespace chat --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply --server-side -f examples/
echo
kubectl get scm,cak -A
echo
echo "The SecureChatModel is stored with its defaults filled in by the API server:"
echo "  kubectl get scm -n chat chatglm3-secure -o yaml"
echo "  kubectl explain scm.spec.network"
echo "Stop everything with: make demo-down"
