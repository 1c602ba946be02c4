#!/usr/bin/env bash
# `make demo`: the whole product on this machine, in one command.
#
# 1. Tools, the default model and the local control plane (cached; started
#    if not up). 2. `helm install` of the chart (CRDs, RBAC, the operator's
#    Deployment). 3. The operator runs as a local process authenticated as
#    the chart's ServiceAccount (a TokenRequest token, not the admin
#    certificate). 4. examples/ is applied GitOps-style: the seed's
#    SecureChatModel and a ChatApiKey. 5. There is no kubelet or container
#    runtime here: kwok simulates the pods. So the workload runs as a local
#    securechat-server process fed by exactly the Secrets and ConfigMap the
#    operator made, projected into a directory the way the kubelet mounts
#    them (securechat-project), so rotations reach it live. 6. A first
#    request with the minted key, then the URLs and snippets.
#
# Ctrl-C (or `make demo-down` from another shell) stops everything it
# started. Re-running is safe: it replaces the processes it started before.
# DEMO_DETACH=1 (or no terminal) leaves it running and returns.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$HOME/.cache/securechat/bin:$HOME/.cargo/bin:$PATH"
export KUBECONFIG="$root/.securechat/kubeconfig"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/securechat/target}"

demo="$root/.securechat/demo"
release=securechat
system_ns=securechat-system
model=chatglm3-secure
model_ns=chat
key_ns=chat-apps
key_secret=frontend-api-key
api_port=${DEMO_API_PORT:-8000}
web_port=${DEMO_WEB_PORT:-8501}
t0=$SECONDS
step() { echo; echo "== $* ($((SECONDS - t0))s)"; }

# Re-running: stop what the last run started (the cluster stays).
scripts/demo-down.sh --keep-cluster >/dev/null 2>&1 || true
mkdir -p "$demo/pids" "$demo/logs"

step "tools, model"
tests/cluster/build-tools.sh
scripts/fetch-model.sh
# shellcheck source=lib/default-model.sh
. scripts/lib/default-model.sh
model_file="$DEFAULT_MODEL"

step "building the operator, the server and the projector"
cargo build -q -p securechat-operator -p securechat-server -p securechat-projector --bins
bin="$CARGO_TARGET_DIR/debug"

step "local control plane"
tests/cluster/up.sh

step "helm install $release (CRDs, RBAC, operator Deployment)"
helm upgrade --install "$release" charts/securechat --namespace "$system_ns" --create-namespace \
	--wait --timeout 120s >"$demo/logs/helm.log"
kubectl wait --for=condition=Established --timeout=60s \
	crd/securechatmodels.securechat.dev crd/chatapikeys.securechat.dev >/dev/null
account=$(kubectl get deployment -n "$system_ns" -l app.kubernetes.io/instance="$release" \
	-o jsonpath='{.items[0].spec.template.spec.serviceAccountName}')

step "the operator, as ServiceAccount $system_ns/$account"
# A kubeconfig with the API server's address and CA and a token for the
# chart's ServiceAccount: the operator has exactly the chart's RBAC.
server=$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')
kubectl config view --raw --minify --flatten -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' |
	base64 -d >"$demo/cluster-ca.crt"
token=$(kubectl create token "$account" -n "$system_ns" --duration=24h)
operator_kubeconfig="$demo/operator.kubeconfig"
KUBECONFIG="$operator_kubeconfig" kubectl config set-cluster demo --server="$server" \
	--certificate-authority="$demo/cluster-ca.crt" --embed-certs >/dev/null
KUBECONFIG="$operator_kubeconfig" kubectl config set-credentials operator --token="$token" >/dev/null
KUBECONFIG="$operator_kubeconfig" kubectl config set-context demo --cluster=demo --user=operator >/dev/null
KUBECONFIG="$operator_kubeconfig" kubectl config use-context demo >/dev/null
KUBECONFIG="$operator_kubeconfig" POD_NAME="demo-$(hostname)" \
	"$bin/securechat-operator" run --leader-elect \
	--leader-election-namespace "$system_ns" \
	--leader-election-lease "$account" \
	--metrics-address 127.0.0.1:0 >"$demo/logs/operator.log" 2>&1 &
echo $! >"$demo/pids/operator"
# Fails here, with its log, rather than as a Ready timeout later.
running_or_die() { # name
	kill -0 "$(cat "$demo/pids/$1")" 2>/dev/null && return 0
	echo "error: $1 exited; its log ($demo/logs/$1.log):" >&2
	tail -20 "$demo/logs/$1.log" >&2
	exit 1
}
sleep 1
running_or_die operator

step "kubectl apply -f examples/"
kubectl apply --server-side -f examples/ >/dev/null
# The certificate covers the Service's in-cluster names; this laptop calls
# the local process as localhost, so the demo adds that name (the operator
# re-issues the certificate live).
kubectl patch scm "$model" -n "$model_ns" --type merge \
	-p '{"spec":{"tls":{"dnsNames":["localhost"]}}}' >/dev/null
if ! kubectl wait scm "$model" -n "$model_ns" --for=condition=Ready --timeout=180s >/dev/null; then
	running_or_die operator
	kubectl get scm "$model" -n "$model_ns" \
		-o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}' >&2
	exit 1
fi
kubectl wait cak frontend -n "$key_ns" --for=condition=Ready --timeout=60s >/dev/null

step "projecting the model's Secrets and ConfigMap as the kubelet would"
pod="$demo/pod"
project() { # kind name mount-dir
	"$bin/securechat-project" --namespace "$model_ns" "--$1" "$2" --dir "$pod$3" \
		>"$demo/logs/project-$2.log" 2>&1 &
	echo $! >"$demo/pids/project-$2"
}
project config-map "$model-config" /etc/securechat/config
project secret "$model-tls" /etc/securechat/tls
project secret "$model-signing-keys" /etc/securechat/signing-keys
project secret "$model-api-keys" /etc/securechat/api-keys
for f in config/config.yaml tls/tls.crt signing-keys/keyset.json api-keys/api-keys.json; do
	for _ in $(seq 1 100); do [ -e "$pod/etc/securechat/$f" ] && break; sleep 0.1; done
	[ -e "$pod/etc/securechat/$f" ] || { echo "error: $f was not projected; see $demo/logs" >&2; exit 1; }
done
# The certificate with localhost in it.
for _ in $(seq 1 100); do
	grep -q localhost <(openssl x509 -in "$pod/etc/securechat/tls/tls.crt" -noout -ext subjectAltName 2>/dev/null) && break
	sleep 0.2
done

step "securechat-server on https://localhost:$api_port (API) and :$web_port (web)"
"$bin/securechat-server" serve --config "$pod/etc/securechat/config/config.yaml" \
	--path-root "$pod" --model "$model_file" \
	--api-addr "127.0.0.1:$api_port" --web-addr "127.0.0.1:$web_port" \
	>"$demo/logs/server.log" 2>&1 &
echo $! >"$demo/pids/server"

kubectl get secret "$key_secret" -n "$key_ns" -o jsonpath='{.data.ca\.crt}' | base64 -d >"$demo/ca.crt"
key=$(kubectl get secret "$key_secret" -n "$key_ns" -o jsonpath='{.data.api-key}' | base64 -d)
for _ in $(seq 1 150); do
	curl -sf --cacert "$demo/ca.crt" "https://localhost:$api_port/healthz" >/dev/null 2>&1 && break
	kill -0 "$(cat "$demo/pids/server")" 2>/dev/null || { cat "$demo/logs/server.log" >&2; exit 1; }
	sleep 0.2
done

step "a first request with the minted key"
if ! answer=$(curl -sS --fail-with-body --cacert "$demo/ca.crt" "https://localhost:$api_port/v1/chat/completions" \
	-H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
	-d '{"model":"chatglm3-secure","messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":24,"temperature":0}'); then
	echo "error: the first request failed: $answer (see $demo/logs/server.log)" >&2
	exit 1
fi
echo "$answer" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("answer:", r["choices"][0]["message"]["content"].strip())'
echo "first answer after $((SECONDS - t0))s"

echo
kubectl get scm,cak -A
cat <<EOF

API:     https://localhost:$api_port/v1   (OpenAI-compatible; seed API at /chat)
Web UI:  https://localhost:$web_port/
CA:      $demo/ca.crt   (from Secret $key_ns/$key_secret, key ca.crt)
Key:     export KEY=\$(kubectl get secret $key_secret -n $key_ns -o jsonpath='{.data.api-key}' | base64 -d)
         (export KUBECONFIG=$KUBECONFIG first)

curl --cacert $demo/ca.crt https://localhost:$api_port/v1/chat/completions \\
  -H "Authorization: Bearer \$KEY" -H 'Content-Type: application/json' \\
  -d '{"model":"$model","messages":[{"role":"user","content":"Hello"}]}'

python3 - <<'PY'
import os, httpx, openai
client = openai.OpenAI(base_url="https://localhost:$api_port/v1", api_key=os.environ["KEY"],
                       http_client=httpx.Client(verify="$demo/ca.crt"))
print(client.chat.completions.create(model="$model",
      messages=[{"role": "user", "content": "Hello"}]).choices[0].message.content)
PY

Rotate live (the server reloads the projected files, no restart; see $demo/logs/server.log):
  kubectl annotate scm $model -n $model_ns securechat.dev/rotate-signing-keys=\$(date +%s) --overwrite
  kubectl annotate scm $model -n $model_ns securechat.dev/rotate-ca=\$(date +%s) --overwrite   # overlap: spec.tls.caOverlap (24h)
Logs: $demo/logs/   Stop: Ctrl-C here, or make demo-down
EOF

if [ "${DEMO_DETACH:-0}" = 1 ] || [ ! -t 0 ]; then
	exit 0
fi
trap 'echo; scripts/demo-down.sh; exit 0' INT TERM
echo "(running; Ctrl-C stops everything)"
wait
