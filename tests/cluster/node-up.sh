#!/usr/bin/env bash
# `make node-up`: one real node, node-0, beside the kwok nodes of the local
# control plane (tests/cluster/up.sh, the one of SECURECHAT_STATE_DIR):
# containerd + runc + the CNI bridge plugin (Debian packages), kubelet and
# kube-proxy (built from the control plane's own wrapper module),
# kube-router's NetworkPolicy controller, and the securechat images loaded
# into containerd without a registry (node-images.sh).
#
# Pods land on node-0 only when they ask for it (its taint and label, see
# node.sh and the README); GPU pods stay on the kwok GPU nodes.
#
# Needs root: it installs packages and changes host networking. What it
# changes is recorded first and node-down.sh (make node-down, make
# cluster-down) puts it back: processes by pid, mounts, the bridge, iptables
# and ipset rules, sysctls. One real node per machine: a second node-up, from
# this checkout or another, fails with a message instead of sharing it.
# Running it again while the node is up is a no-op.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/tests/cluster/state.sh"
. "$root/tests/cluster/node.sh"
bin="${SECURECHAT_CACHE:-$HOME/.cache/securechat}/bin"
export PATH="$bin:$PATH"
t0=$SECONDS
step() { echo "node-up: $* ($((SECONDS - t0))s)"; }

if [ "$(id -u)" != 0 ]; then
	echo "error: make node-up needs root (it runs containerd and changes the host's bridges and iptables)" >&2
	exit 1
fi
for tool in kubelet kube-proxy kube-router coredns pause prometheus kubectl crane; do
	if [ ! -x "$bin/$tool" ]; then
		echo "error: $bin/$tool is missing; run 'make tools' first" >&2
		exit 1
	fi
done
kc() { kubectl --kubeconfig "$kubeconfig" "$@"; }
if ! kc get --raw /readyz >/dev/null 2>&1; then
	echo "error: no control plane in $state; run 'make cluster-up' first" >&2
	exit 1
fi
pki="$dir/pki"
if [ ! -f "$pki/apiserver-kubelet-client.crt" ]; then
	echo "error: the control plane in $state predates the real node (no kubelet client certificate); restart it: make cluster-down cluster-up" >&2
	exit 1
fi

node_locked
owner=$(node_owner)
if [ -n "$owner" ] && [ "$owner" != "$node_dir" ]; then
	echo "error: the real node is in use by the control plane of $owner; stop it there first (SECURECHAT_STATE_DIR=${owner%/node} make node-down)" >&2
	exit 1
fi
if [ -n "$owner" ] && node_alive kubelet && node_alive containerd &&
	kc wait --for=condition=Ready "node/$node_name" --timeout=5s >/dev/null 2>&1; then
	echo "node-up: $node_name already up"
	exit 0
fi
# A half-started node from before: take it down first (under our lock).
if [ -n "$owner" ]; then
	SECURECHAT_NODE_LOCKED=1 "$root/tests/cluster/node-down.sh"
fi

# ---- packages (Debian; once) ----
step "packages"
"$root/tests/cluster/node-packages.sh"
cni_bin=/usr/lib/cni

# ---- the host as it was (node-down.sh restores and checks it) ----
mkdir -p "$node_run/before" "$node_dir"/{logs,pki}
echo "$node_dir" >"$node_run/owner"
before="$node_run/before"
for s in $node_sysctls; do
	v=$(sysctl -n "$s" 2>/dev/null) && printf '%s=%s\n' "$s" "$v"
done >"$before/sysctls"
nft list tables >"$before/nft-tables" 2>/dev/null || true
ipset list -n >"$before/ipsets" 2>/dev/null || true
iptables-save >"$before/iptables" 2>/dev/null || true
ip6tables-save >"$before/ip6tables" 2>/dev/null || true
for p in $node_host_paths; do [ -e "$p" ] && echo "$p"; done >"$before/paths" || true
ls /run/netns 2>/dev/null >"$before/netns" || true
awk '{print $5}' /proc/self/mountinfo | sort >"$before/mounts"

# ---- certificates, from the control plane's CA ----
step "certificates"
api_port=$(cat "$dir/api-port")
openssl_quiet() { openssl "$@" 2>/dev/null; }
cert() { # name CN O extfile-lines
	local name=$1 cn=$2 o=$3 ext=$4
	printf '%b\n' "$ext" >"$node_dir/pki/$name.ext"
	openssl_quiet req -newkey rsa:2048 -nodes -subj "/CN=$cn/O=$o" \
		-keyout "$node_dir/pki/$name.key" -out "$node_dir/pki/$name.csr"
	openssl_quiet x509 -req -in "$node_dir/pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
		-CAcreateserial -days 365 -extfile "$node_dir/pki/$name.ext" -out "$node_dir/pki/$name.crt"
}
cert kubelet "system:node:$node_name" system:nodes "extendedKeyUsage=clientAuth"
cert kubelet-serving "system:node:$node_name" system:nodes \
	"extendedKeyUsage=serverAuth\nsubjectAltName=IP:$node_ip,DNS:$node_name"
cert kube-proxy system:kube-proxy system:node-proxier "extendedKeyUsage=clientAuth"
cert kube-router securechat:kube-router securechat:node-agents "extendedKeyUsage=clientAuth"
node_kubeconfig() { # name
	cat >"$node_dir/$1.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: securechat-local
  cluster: {server: "https://127.0.0.1:$api_port", certificate-authority: "$pki/ca.crt"}
users:
- name: $1
  user: {client-certificate: "$node_dir/pki/$1.crt", client-key: "$node_dir/pki/$1.key"}
contexts:
- name: securechat-local
  context: {cluster: securechat-local, user: $1}
current-context: securechat-local
KC
}
for n in kubelet kube-proxy kube-router; do node_kubeconfig "$n"; done
# The API server's kubelet client may proxy to the kubelet (logs, exec);
# kube-router reads what a policy controller needs, nothing more.
managed_key=${node_managed_label%%=*} managed_value=${node_managed_label#*=}
kc apply -f - >/dev/null <<RBAC
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "securechat:apiserver-kubelet-client", labels: {$managed_key: $managed_value}}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:kubelet-api-admin"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "securechat:apiserver-kubelet-client"}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "securechat:kube-router", labels: {$managed_key: $managed_value}}
rules:
- apiGroups: [""]
  resources: [pods, namespaces, nodes, services, endpoints]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "securechat:kube-router", labels: {$managed_key: $managed_value}}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "securechat:kube-router"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "securechat:kube-router"}]
RBAC

# Pods reach the API server through the `kubernetes` Service (in-cluster
# clients, e.g. the operator as a real pod): the API server runs with no
# endpoint reconciler, so its endpoints are set here, to the node's bridge
# address where it listens (up.sh).
kc apply -f - >/dev/null <<SLICE
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes
  namespace: default
  labels: {kubernetes.io/service-name: kubernetes, endpointslice.kubernetes.io/managed-by: securechat.dev-node-up}
addressType: IPv4
endpoints: [{addresses: ["$node_ip"], conditions: {ready: true}}]
ports: [{name: https, port: $api_port, protocol: TCP}]
SLICE

launch() { # name command...
	local name=$1
	shift
	# 9>&-: the daemons must not inherit the lock (node.sh) and hold it
	# after this script ends.
	setsid "$@" >"$node_dir/logs/$name.log" 2>&1 </dev/null 9>&- &
	echo $! >"$node_dir/$name.pid"
}
wait_for() { # description seconds command...
	local what=$1 secs=$2
	shift 2
	local deadline=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		for pidfile in "$node_dir"/*.pid; do
			[ -f "$pidfile" ] || continue
			if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
				local name
				name=$(basename "$pidfile" .pid)
				echo "error: $name exited while waiting for $what; its log ($node_dir/logs/$name.log) ends:" >&2
				tail -n 20 "$node_dir/logs/$name.log" >&2
				exit 1
			fi
		done
		if [ $SECONDS -ge $deadline ]; then
			echo "error: timed out after ${secs}s waiting for $what; logs in $node_dir/logs" >&2
			tail -n 20 "$node_dir"/logs/*.log >&2 || true
			exit 1
		fi
		sleep 0.3
	done
}

# ---- the pods' bridge: its first address is the node's IP ----
step "bridge $node_bridge ($node_ip)"
ip link add "$node_bridge" type bridge
ip addr add "$node_ip/${node_pod_cidr#*/}" dev "$node_bridge"
ip link set "$node_bridge" up
mkdir -p "$node_dir/cni/conf" "$node_dir/cni/ipam"
# No masquerading: pods reach the node and each other, nothing outside
# (no registry, no internet); hairpin so a pod reaches itself through its
# Service.
cat >"$node_dir/cni/conf/10-securechat.conflist" <<CNI
{
  "cniVersion": "0.4.0",
  "name": "securechat-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$node_bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$node_dir/cni/ipam",
        "ranges": [[{"subnet": "$node_pod_cidr", "gateway": "$node_ip"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
CNI

# ---- containerd: its own socket, state and root ----
step "containerd"
cat >"$node_dir/containerd.toml" <<TOML
version = 2
root = "$node_dir/containerd"
state = "$node_run/containerd"
[grpc]
  address = "$node_containerd_sock"
[ttrpc]
  address = "$node_containerd_sock.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$node_image_prefix/pause:node"
  disable_apparmor = true
  # The VM's capability bounding set lacks CAP_SYS_RESOURCE: a negative
  # oom_score_adj fails every sandbox ("can't get final child's PID").
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$cni_bin"
    conf_dir = "$node_dir/cni/conf"
    max_conf_num = 1
TOML
launch containerd containerd --config "$node_dir/containerd.toml"
ctr_() { ctr --address "$node_containerd_sock" -n k8s.io "$@"; }
wait_for containerd 30 ctr_ version

step "images"
images="$root/target/node-images"
for image in securechat-server securechat-operator pause client coredns prometheus; do
	if [ ! -f "$images/$image.tar" ]; then
		echo "error: no $images/$image.tar; build the node's images first: tests/cluster/node-images.sh" >&2
		exit 1
	fi
	imported=$(ctr_ images import "$images/$image.tar" | awk '/^unpacking/{print $2; exit}')
	[ -n "$imported" ] || { echo "error: importing $images/$image.tar named no image" >&2; exit 1; }
	ctr_ images tag --force "$imported" "$node_image_prefix/$image:node" >/dev/null
done

# ---- kubelet ----
step "kubelet"
mkdir -p "$node_dir/kubelet" "$node_dir/pod-logs"
cat >"$node_dir/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine mounts cgroup v1 (hybrid); never remount it.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$node_containerd_sock
address: $node_ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $node_dir/pki/kubelet-serving.crt
tlsPrivateKeyFile: $node_dir/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
podCIDR: $node_pod_cidr
podLogsDir: $node_dir/pod-logs
registerWithTaints:
- {key: "${node_taint%%=*}", value: "$(echo "${node_taint#*=}" | cut -d: -f1)", effect: "${node_taint##*:}"}
failSwapOn: false
# The disk is shared and mostly full: the defaults (evict below 10% free,
# collect images above 85% use) would evict the tests' pods for other
# people's files. Memory pressure still evicts.
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
# A Secret's update reaches a pod's volume when the kubelet next syncs the
# pod: every 10 s here (default 1 min), so rotation tests wait less.
syncFrequency: 10s
resolvConf: /etc/resolv.conf
clusterDNS: ["$node_dns_ip"]
clusterDomain: $node_cluster_domain
YAML
launch kubelet kubelet --config "$node_dir/kubelet.yaml" --kubeconfig "$node_dir/kubelet.kubeconfig" \
	--root-dir "$node_dir/kubelet" --hostname-override "$node_name" --node-ip "$node_ip" \
	--node-labels "$node_label" --v=1
wait_for "node $node_name Ready" 90 kc wait --for=condition=Ready "node/$node_name" --timeout=2s

# ---- kube-proxy (iptables) and kube-router's policy controller ----
step "kube-proxy, kube-router"
cat >"$node_dir/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $node_dir/kube-proxy.kubeconfig}
hostnameOverride: $node_name
mode: iptables
clusterCIDR: $node_pod_cidr
bindAddress: $node_ip
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
iptables: {localhostNodePorts: false}
# 0: leave the host's conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
launch kube-proxy kube-proxy --config "$node_dir/kube-proxy.yaml" --v=1
# kube-network-policies needs CONFIG_NFT_QUEUE, which this kernel lacks;
# kube-router's policy controller works with iptables and ipsets.
launch kube-router kube-router --kubeconfig "$node_dir/kube-router.kubeconfig" \
	--hostname-override "$node_name" \
	--run-firewall=true --run-router=false --run-service-proxy=false --enable-cni=false \
	--health-port 20244 --metrics-port 0 --v=1
wait_for kube-proxy 60 curl -sf http://127.0.0.1:10256/healthz
wait_for kube-router 60 curl -sf http://127.0.0.1:20244/healthz

# ---- cluster DNS: CoreDNS as a pod (kube-system, k8s-app=kube-dns, the
# labels the operator's NetworkPolicies allow DNS to), Service names only
# (nothing upstream is reachable) ----
step "cluster DNS"
taint_key=${node_taint%%=*} taint_rest=${node_taint#*=}
kc apply -f - >/dev/null <<DNS
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system, labels: {$managed_key: $managed_value}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "securechat:coredns", labels: {$managed_key: $managed_value}}
rules:
- apiGroups: [""]
  resources: [services, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "securechat:coredns", labels: {$managed_key: $managed_value}}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "securechat:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system, labels: {$managed_key: $managed_value}}
data:
  Corefile: |
    .:53 {
        ready :8181
        health :8080
        errors
        cache 30
        kubernetes $node_cluster_domain in-addr.arpa ip6.arpa
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {$managed_key: $managed_value}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      nodeSelector: {"${node_label%%=*}": "${node_label#*=}"}
      tolerations: [{key: "$taint_key", operator: Equal, value: "${taint_rest%%:*}", effect: "${taint_rest##*:}"}]
      # Port 53 as kubeadm's CoreDNS serves it (the operator's NetworkPolicies
      # allow DNS to port 53 of kube-dns pods; the port is matched after
      # the Service's DNAT), without a capability: a namespaced sysctl.
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        runAsGroup: 65532
        seccompProfile: {type: RuntimeDefault}
        sysctls: [{name: net.ipv4.ip_unprivileged_port_start, value: "53"}]
      containers:
      - name: coredns
        image: $node_image_prefix/coredns:node
        imagePullPolicy: Never
        args: [-conf, /etc/coredns/Corefile]
        ports: [{name: dns, containerPort: 53, protocol: UDP}, {name: dns-tcp, containerPort: 53, protocol: TCP}]
        readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 2}
        livenessProbe: {httpGet: {path: /health, port: 8080}, periodSeconds: 10}
        resources: {limits: {memory: 128Mi}, requests: {cpu: 10m, memory: 32Mi}}
        securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {$managed_key: $managed_value}}
spec:
  clusterIP: $node_dns_ip
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, targetPort: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, targetPort: 53, protocol: TCP}
DNS
wait_for "CoreDNS Ready" 120 kc -n kube-system wait --for=condition=Available deployment/coredns --timeout=2s

cat >"$node_dir/node.env" <<ENV
NODE_NAME=$node_name
NODE_IP=$node_ip
NODE_POD_CIDR=$node_pod_cidr
NODE_LABEL=$node_label
NODE_TAINT=$node_taint
SERVER_IMAGE=$node_image_prefix/securechat-server:node
OPERATOR_IMAGE=$node_image_prefix/securechat-operator:node
CLIENT_IMAGE=$node_image_prefix/client:node
PROMETHEUS_IMAGE=$node_image_prefix/prometheus:node
CONTAINERD_SOCKET=$node_containerd_sock
DNS_IP=$node_dns_ip
CLUSTER_DOMAIN=$node_cluster_domain
ENV
step "$node_name up (kubectl get node $node_name)"
