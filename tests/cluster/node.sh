# Sourced by node-up.sh and node-down.sh (after state.sh): the facts of the
# real node, each in one place. The test harness reads the node's
# description from "$node_dir/node.env" (written by node-up.sh).
#
# One real node per machine: its bridge, the kubelet's port and the iptables
# rules are host-wide. Host-wide state therefore lives in $node_run, not in
# the control plane's state dir: the lock, which control plane owns the node
# (owner), the snapshot of the host taken before it came up (before/), and
# containerd's sockets.
node_name=node-0
node_dir="$state/node"
node_run=/run/securechat-node
node_lock=/run/lock/securechat-node.lock
# The pods' bridge; its first address is the node's IP (the kubelet refuses
# a loopback node IP) and the pods' gateway.
node_bridge=scnode0
node_pod_cidr=10.85.0.0/24
node_ip=10.85.0.1
# Pods land here only when they ask: tolerate this taint and select this
# label (the README says how a SecureChatModel does so).
node_label=securechat.dev/node=real
node_taint=securechat.dev/node=real:NoSchedule
# Cluster DNS: CoreDNS as a pod on the node, behind the kube-dns Service at
# this address (in up.sh's service range), as the kubelet tells pods.
node_dns_ip=10.96.0.10
node_cluster_domain=cluster.local
# Label on what node-up.sh creates through the API (removed by node-down.sh).
node_managed_label=app.kubernetes.io/managed-by=securechat-node-up
# Images loaded into the node's containerd (no registry is reachable).
node_image_prefix=localhost/securechat
node_containerd_sock="$node_run/containerd.sock"
# Sysctls the kubelet, the bridge plugin and kube-proxy may change; saved
# before and restored by node-down.sh.
node_sysctls="vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward net.ipv4.conf.all.forwarding net.ipv6.conf.all.forwarding net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables"
# Host paths the node's parts create outside $node_dir when missing
# (containerd's shim sockets, libcni's cache, the kubelet's container log
# links, pods' network namespaces); node-down.sh removes those that did not
# exist before.
node_host_paths="/run/containerd /var/lib/cni /var/log/containers /var/log/pods /run/netns /var/lib/kubelet /etc/cni /opt/cni"

# node_locked: takes the host-wide lock on fd 9, or fails saying who holds it.
node_locked() {
	mkdir -p "$(dirname "$node_lock")"
	exec 9>>"$node_lock"
	if ! flock -n 9; then
		echo "error: another make node-up/node-down holds $node_lock; one real node per machine, try again when it is done" >&2
		exit 1
	fi
}

# node_owner: the node dir of the control plane the node belongs to, if any.
node_owner() { cat "$node_run/owner" 2>/dev/null || true; }

node_alive() { [ -f "$node_dir/$1.pid" ] && kill -0 "$(cat "$node_dir/$1.pid")" 2>/dev/null; }
