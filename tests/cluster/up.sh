#!/usr/bin/env bash
# Starts a local Kubernetes control plane for the tests and the demo:
# etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok,
# with fake GPU nodes that kwok keeps Ready. All bound to 127.0.0.1 but the
# API server, which listens on every address so that pods on the real node
# (make node-up) reach it at the node's bridge address; it serves TLS and
# authenticates every client (anonymous requests see only /version and
# the health endpoints).
#
# State lives in .securechat/cluster (git-ignored); the admin kubeconfig is
# written to .securechat/kubeconfig. SECURECHAT_STATE_DIR moves both (see
# state.sh), so several control planes can run side by side. Running it
# again while the cluster is up is a no-op. Stop it with
# tests/cluster/down.sh (make cluster-down).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/tests/cluster/state.sh"
. "$root/tests/cluster/node.sh"
bin="${SECURECHAT_CACHE:-$HOME/.cache/securechat}/bin"
export PATH="$bin:$PATH"

for tool in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok; do
	if [ ! -x "$bin/$tool" ]; then
		echo "error: $bin/$tool is missing; run 'make tools' first" >&2
		exit 1
	fi
done

alive() { [ -f "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }

if alive kube-apiserver && kubectl --kubeconfig "$kubeconfig" get --raw /readyz >/dev/null 2>&1; then
	echo "cluster already up (kubeconfig: $kubeconfig)"
	exit 0
fi
# A half-started or crashed cluster from before: clear it first.
"$root/tests/cluster/down.sh" >/dev/null 2>&1 || true

start=$SECONDS
mkdir -p "$dir"/{pki,logs,etcd}
pki="$dir/pki"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
etcd_port=$(free_port)
etcd_peer_port=$(free_port)
api_port=${SECURECHAT_API_PORT:-$(free_port)}
echo "$api_port" >"$dir/api-port"

# ---- certificates: one CA for serving and client certs, plus SA keys ----
openssl_quiet() { openssl "$@" 2>/dev/null; }
openssl_quiet req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=securechat-test-ca" \
	-keyout "$pki/ca.key" -out "$pki/ca.crt"
# Services get addresses from service_cidr; its first is the `kubernetes`
# Service's, which pods on the real node (make node-up) use to reach the
# API server, as they can its bridge address $node_ip.
service_cidr=10.96.0.0/16
kubernetes_service_ip=10.96.0.1
cat >"$pki/serving.ext" <<EXT
subjectAltName=IP:127.0.0.1,IP:$kubernetes_service_ip,IP:$node_ip,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth
EXT
openssl_quiet req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr"
openssl_quiet x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
	-days 3650 -extfile "$pki/serving.ext" -out "$pki/apiserver.crt"
echo "extendedKeyUsage=clientAuth" >"$pki/client.ext"
client_cert() { # name CN O
	openssl_quiet req -newkey rsa:2048 -nodes -subj "/CN=$2/O=$3" -keyout "$pki/$1.key" -out "$pki/$1.csr"
	openssl_quiet x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
		-days 3650 -extfile "$pki/client.ext" -out "$pki/$1.crt"
}
client_cert admin securechat-admin system:masters
client_cert controller-manager system:kube-controller-manager system:kube-controller-manager
client_cert scheduler system:kube-scheduler system:kube-scheduler
# The API server's identity towards a real kubelet (make node-up): logs,
# exec and port-forward reach node-0 with this certificate, which node-up.sh
# binds to system:kubelet-api-admin; the kubelet allows no anonymous calls.
client_cert apiserver-kubelet-client securechat:apiserver-kubelet-client securechat:apiserver
# The aggregation layer (custom.metrics.k8s.io from prometheus-adapter,
# tests/node/autoscaling.rs): the API server proxies to an APIService's
# backend with this front-proxy client certificate, from a CA of its own
# (as kubeadm does), and the backend trusts the user it names in headers.
openssl_quiet req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=securechat-test-front-proxy-ca" \
	-keyout "$pki/front-proxy-ca.key" -out "$pki/front-proxy-ca.crt"
openssl_quiet req -newkey rsa:2048 -nodes -subj "/CN=front-proxy-client" \
	-keyout "$pki/front-proxy-client.key" -out "$pki/front-proxy-client.csr"
openssl_quiet x509 -req -in "$pki/front-proxy-client.csr" -CA "$pki/front-proxy-ca.crt" -CAkey "$pki/front-proxy-ca.key" \
	-CAcreateserial -days 3650 -extfile "$pki/client.ext" -out "$pki/front-proxy-client.crt"
openssl_quiet genrsa -out "$pki/sa.key" 2048
openssl_quiet rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub"

write_kubeconfig() { # file cert-name
	cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: securechat-local
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $pki/$2.crt
    client-key: $pki/$2.key
contexts:
- name: securechat-local
  context: {cluster: securechat-local, user: $2}
current-context: securechat-local
KC
}
write_kubeconfig "$kubeconfig.tmp" admin
write_kubeconfig "$dir/controller-manager.kubeconfig" controller-manager
write_kubeconfig "$dir/scheduler.kubeconfig" scheduler

launch() { # name command...
	local name=$1
	shift
	# The command line is kept so restart.sh can start it again as it was
	# (the chaos tests restart kube-apiserver and etcd).
	printf '%q ' "$@" >"$dir/$name.cmd"
	setsid "$@" >"$dir/logs/$name.log" 2>&1 </dev/null &
	echo $! >"$dir/$name.pid"
}

wait_for() { # description seconds command...
	local what=$1 secs=$2
	shift 2
	local deadline=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		for pidfile in "$dir"/*.pid; do
			if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
				local name
				name=$(basename "$pidfile" .pid)
				echo "error: $name exited while waiting for $what; its log ($dir/logs/$name.log) ends:" >&2
				tail -n 20 "$dir/logs/$name.log" >&2
				exit 1
			fi
		done
		if [ $SECONDS -ge $deadline ]; then
			echo "error: timed out after ${secs}s waiting for $what; logs in $dir/logs" >&2
			tail -n 20 "$dir"/logs/*.log >&2 || true
			exit 1
		fi
		sleep 0.3
	done
}

launch etcd etcd --name default --data-dir "$dir/etcd" \
	--listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
	--listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
	--initial-cluster "default=http://127.0.0.1:$etcd_peer_port" \
	--unsafe-no-fsync=true --log-level=warn
wait_for etcd 30 curl -sf "http://127.0.0.1:$etcd_port/health"

# Audit log of every write (reads are too many to keep): tests count the
# operator's write requests from here, as the API server saw them, rather
# than trusting the operator's own counters. Node-heartbeat and leader
# leases of the system components are left out.
cat >"$dir/audit-policy.yaml" <<'POLICY'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  verbs: [get, list, watch]
- level: None
  namespaces: [kube-system, kube-node-lease]
- level: Metadata
POLICY

launch kube-apiserver kube-apiserver \
	--etcd-servers "http://127.0.0.1:$etcd_port" \
	--bind-address 0.0.0.0 --advertise-address 127.0.0.1 --secure-port "$api_port" \
	--tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
	--client-ca-file "$pki/ca.crt" \
	--authorization-mode Node,RBAC \
	--service-cluster-ip-range "$service_cidr" \
	--service-account-issuer "https://127.0.0.1:$api_port" \
	--service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
	--allow-privileged=true \
	--kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
	--kubelet-preferred-address-types InternalIP,Hostname \
	--requestheader-client-ca-file "$pki/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
	--requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
	--requestheader-extra-headers-prefix X-Remote-Extra- \
	--proxy-client-cert-file "$pki/front-proxy-client.crt" --proxy-client-key-file "$pki/front-proxy-client.key" \
	--endpoint-reconciler-type none \
	--enable-priority-and-fairness=false \
	--profiling=false \
	--audit-policy-file "$dir/audit-policy.yaml" --audit-log-path "$dir/audit.log" \
	--audit-log-format json --audit-log-maxsize 200 --audit-log-maxbackup 1 \
	--v=1
wait_for kube-apiserver 90 kubectl --kubeconfig "$kubeconfig.tmp" get --raw /readyz
mv "$kubeconfig.tmp" "$kubeconfig"
kc() { kubectl --kubeconfig "$kubeconfig" "$@"; }

# HPAs are synced every 5 s (default 15 s), so the real node's autoscaling
# test (tests/node/autoscaling.rs) waits less for each move.
# A long node-monitor grace: a node marked NotReady flips the Ready condition
# of every pod on it to False, and kwok never sets it back, so a heartbeat
# late on this loaded 2-core machine must not cost the cluster its pods.
launch kube-controller-manager kube-controller-manager \
	--kubeconfig "$dir/controller-manager.kubeconfig" \
	--authentication-kubeconfig "$dir/controller-manager.kubeconfig" \
	--authorization-kubeconfig "$dir/controller-manager.kubeconfig" \
	--service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
	--use-service-account-credentials=true \
	--cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
	--leader-elect=false --bind-address 127.0.0.1 --secure-port "$(free_port)" \
	--node-monitor-grace-period 10m \
	--horizontal-pod-autoscaler-sync-period 5s \
	--v=1
launch kube-scheduler kube-scheduler \
	--kubeconfig "$dir/scheduler.kubeconfig" \
	--authentication-kubeconfig "$dir/scheduler.kubeconfig" \
	--authorization-kubeconfig "$dir/scheduler.kubeconfig" \
	--leader-elect=false --bind-address 127.0.0.1 --secure-port "$(free_port)" \
	--v=1
# Node leases, as kwokctl sets them: without --node-lease-duration-seconds,
# kwok v0.7.0 renews no lease and posts node status only every 10-20 min, so
# about 10 min after kube-controller-manager started it marked every node
# NotReady and every pod then on them stayed NotReady (a chaos test's model
# sat at 0/1 ready in CI). With a lease, kwok renews it every 10 s and posts
# status every 20-45 s.
launch kwok kwok --kubeconfig "$kubeconfig" \
	--node-lease-duration-seconds 40 \
	--manage-all-nodes=false \
	--manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
	--cidr 10.244.0.0/16 --node-ip 127.0.0.1 \
	--server-address "127.0.0.1:$(free_port)"

kc apply -f "$root/tests/cluster/nodes.yaml" >/dev/null
wait_for "fake nodes Ready" 60 kc wait --for=condition=Ready node --all --timeout=2s
wait_for "default service account" 60 kc -n default get serviceaccount default

echo "cluster up in $((SECONDS - start))s: kubeconfig $kubeconfig (export KUBECONFIG=$kubeconfig)"
