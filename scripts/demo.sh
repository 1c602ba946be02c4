#!/usr/bin/env bash
# `make demo`: the whole product on this machine, in one command, as real
# pods.
#
# 1. Tools, the default model and the local control plane (cached; started
#    if not up). 2. The real node, node-0 (tests/cluster/node-up.sh: root;
#    containerd, kubelet, kube-proxy, kube-router, CoreDNS) with the
#    securechat images loaded. 3. `helm install` of the chart: the operator
#    runs as the chart's Deployment pod on node-0, with the chart's RBAC and
#    leader election. 4. examples/ is applied GitOps-style: the seed's
#    SecureChatModel, made a CPU model on node-0 as it is applied (this
#    machine has no GPU; the example's GPU request would land on a kwok
#    node, where nothing runs), and a ChatApiKey. 5. A first request with the minted key
#    through the model's Service (kube-proxy) with the certificate the
#    operator issued, then the URLs and snippets.
#
# `make demo-down` stops the node and the control plane, restoring the host.
# Re-running is safe: each step is idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$HOME/.cache/securechat/bin:$HOME/.cargo/bin:$PATH"
# The demo's control plane is always the one in .securechat/ (make test
# runs its own elsewhere, see tests/cluster/state.sh).
unset SECURECHAT_STATE_DIR
export KUBECONFIG="$root/.securechat/kubeconfig"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/securechat/target}"

demo="$root/.securechat/demo"
release=securechat
system_ns=securechat-system
model=chatglm3-secure
model_ns=chat
key_ns=chat-apps
key_secret=frontend-api-key
t0=$SECONDS
step() { echo; echo "== $* ($((SECONDS - t0))s)"; }

if [ "$(id -u)" != 0 ]; then
	echo "error: make demo runs the model as a real pod on a real node, which needs root (containerd, bridges, iptables); run it as root" >&2
	exit 1
fi
mkdir -p "$demo/logs"

step "tools, model"
tests/cluster/build-tools.sh
scripts/fetch-model.sh

step "building the operator and the server"
cargo build -q -p securechat-operator -p securechat-server --bins

step "local control plane"
tests/cluster/up.sh

step "the real node node-0 (images packed from the build above)"
NODE_IMAGE_BIN_DIR="$CARGO_TARGET_DIR/debug" tests/cluster/node-images.sh
tests/cluster/node-up.sh
# shellcheck disable=SC1091 # written by node-up.sh
. "$root/.securechat/node/node.env"
label_key=${NODE_LABEL%%=*} label_value=${NODE_LABEL#*=}
taint_key=${NODE_TAINT%%=*} taint_rest=${NODE_TAINT#*=}
taint_value=${taint_rest%%:*} taint_effect=${taint_rest##*:}
node_selector="{\"$label_key\":\"$label_value\"}"
tolerations="[{\"key\":\"$taint_key\",\"operator\":\"Equal\",\"value\":\"$taint_value\",\"effect\":\"$taint_effect\"}]"

step "helm install $release (CRDs, RBAC, the operator's Deployment on $NODE_NAME)"
helm upgrade --install "$release" charts/securechat --namespace "$system_ns" --create-namespace \
	--set "operator.image.repository=${OPERATOR_IMAGE%:*}" --set "operator.image.tag=${OPERATOR_IMAGE##*:}" \
	--set "serverImage.repository=${SERVER_IMAGE%:*}" --set "serverImage.tag=${SERVER_IMAGE##*:}" \
	--set-json "operator.nodeSelector=$node_selector" --set-json "operator.tolerations=$tolerations" \
	--wait --timeout 180s >"$demo/logs/helm.log"
kubectl wait --for=condition=Established --timeout=60s \
	crd/securechatmodels.securechat.dev crd/chatapikeys.securechat.dev >/dev/null
kubectl get pods -n "$system_ns" -o wide

step "kubectl apply -f examples/ (the model as a CPU model on $NODE_NAME)"
# examples/ as they are, but the SecureChatModels with no GPU and node-0's
# scheduling, in one server-side apply (so a re-run applies the same).
kubectl create --dry-run=client -o json -f examples/ |
	NODE_SELECTOR=$node_selector TOLERATIONS=$tolerations python3 -c '
import json, os, sys
text, objects, decoder, at = sys.stdin.read(), [], json.JSONDecoder(), 0
while text[at:].strip():  # kubectl prints the objects one after another
    o, at = decoder.raw_decode(text, at + len(text[at:]) - len(text[at:].lstrip()))
    if o["kind"] == "SecureChatModel":
        o["spec"].setdefault("resources", {})["gpu"] = {"count": 0}
        o["spec"]["scheduling"] = {"nodeSelector": json.loads(os.environ["NODE_SELECTOR"]),
                                   "tolerations": json.loads(os.environ["TOLERATIONS"])}
    objects.append(o)
json.dump({"apiVersion": "v1", "kind": "List", "items": objects}, sys.stdout)' >"$demo/examples.json"
kubectl apply --server-side -f "$demo/examples.json" >/dev/null
if ! kubectl wait scm "$model" -n "$model_ns" --for=condition=Ready --timeout=240s >/dev/null; then
	kubectl get scm "$model" -n "$model_ns" \
		-o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}' >&2
	kubectl describe pods -n "$model_ns" >&2
	exit 1
fi
# A re-run's earlier pods gone: the Service's only endpoint is the new pod.
kubectl rollout status "deployment/$model" -n "$model_ns" --timeout=240s >/dev/null
kubectl wait cak frontend -n "$key_ns" --for=condition=Ready --timeout=60s >/dev/null
kubectl get pods -n "$model_ns" -o wide

step "a first request with the minted key, through the Service"
host="$model.$model_ns.svc"
cluster_ip=$(kubectl get service "$model" -n "$model_ns" -o jsonpath='{.spec.clusterIP}')
api_port=$(kubectl get scm "$model" -n "$model_ns" -o jsonpath='{.spec.ports.api}')
web_port=$(kubectl get scm "$model" -n "$model_ns" -o jsonpath='{.spec.ports.web}')
kubectl get secret "$key_secret" -n "$key_ns" -o jsonpath='{.data.ca\.crt}' | base64 -d >"$demo/ca.crt"
key=$(kubectl get secret "$key_secret" -n "$key_ns" -o jsonpath='{.data.api-key}' | base64 -d)
# The key reaches the pod's mounted key table with the kubelet's next
# Secret sync (every 10 s on node-0): retry until it is accepted.
request() {
	curl -sS --fail-with-body --cacert "$demo/ca.crt" --resolve "$host:$api_port:$cluster_ip" \
		"https://$host:$api_port/v1/chat/completions" \
		-H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
		-d "{\"model\":\"$model\",\"messages\":[{\"role\":\"user\",\"content\":\"Say hello in five words.\"}],\"max_tokens\":24,\"temperature\":0}"
}
for attempt in $(seq 1 30); do
	if answer=$(request 2>&1); then break; fi
	[ "$attempt" = 30 ] && { echo "error: the first request failed: $answer" >&2; exit 1; }
	sleep 2
done
echo "$answer" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("answer:", r["choices"][0]["message"]["content"].strip())'
echo "first answer after $((SECONDS - t0))s"

echo
kubectl get scm,cak -A
cat <<EOF

The model runs as pod $(kubectl get pods -n "$model_ns" -l "app.kubernetes.io/instance=$model" -o jsonpath='{.items[0].metadata.name}') on $NODE_NAME; its Service $host is at $cluster_ip
(reachable from this host; add "$cluster_ip $host" to /etc/hosts for other clients).
API:     https://$host:$api_port/v1   (OpenAI-compatible; seed API at /chat)
Web UI:  https://$host:$web_port/
CA:      $demo/ca.crt   (from Secret $key_ns/$key_secret, key ca.crt)
Key:     export KEY=\$(kubectl get secret $key_secret -n $key_ns -o jsonpath='{.data.api-key}' | base64 -d)
         (export KUBECONFIG=$KUBECONFIG first)

curl --cacert $demo/ca.crt --resolve $host:$api_port:$cluster_ip https://$host:$api_port/v1/chat/completions \\
  -H "Authorization: Bearer \$KEY" -H 'Content-Type: application/json' \\
  -d '{"model":"$model","messages":[{"role":"user","content":"Hello"}]}'

Rotate live (the kubelet updates the pod's files, the server reloads them, no restart):
  kubectl annotate scm $model -n $model_ns securechat.dev/rotate-signing-keys=\$(date +%s) --overwrite
  kubectl annotate scm $model -n $model_ns securechat.dev/rotate-ca=\$(date +%s) --overwrite   # overlap: spec.tls.caOverlap (24h)
Logs: kubectl logs -n $model_ns deploy/$model; kubectl logs -n $system_ns deploy/$release-operator
Stop: make demo-down (the node, the control plane; the host restored)
EOF
