#!/usr/bin/env bash
# `make node-down` (also part of `make cluster-down`): stops the real node
# node-up.sh started for this control plane and puts the host back as
# node-up.sh found it: its pods, processes (by pid), mounts, network
# namespaces, the bridge, iptables rules and ipsets, sysctls, cgroups and
# files. Then it checks that the host matches the snapshot node-up.sh took,
# and fails, listing the differences, when it does not.
#
# A node that belongs to another checkout's control plane is left alone.
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/tests/cluster/state.sh"
. "$root/tests/cluster/node.sh"
bin="${SECURECHAT_CACHE:-$HOME/.cache/securechat}/bin"
export PATH="$bin:$PATH"

owner=$(node_owner)
if [ "$owner" != "$node_dir" ]; then
	# Nothing of ours on this host; files a crashed run left are ours alone.
	[ -d "$node_dir" ] && [ -z "$owner" ] && rm -rf "$node_dir"
	echo "node not running"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "error: make node-down needs root" >&2
	exit 1
fi
[ -n "${SECURECHAT_NODE_LOCKED:-}" ] || node_locked
before="$node_run/before"
kc() { kubectl --kubeconfig "$kubeconfig" --request-timeout=5s "$@"; }
ctr_() { ctr --address "$node_containerd_sock" -n k8s.io "$@"; }

stop() { # name: SIGTERM, then SIGKILL after 5 s
	local pidfile="$node_dir/$1.pid" pid
	[ -f "$pidfile" ] || return 0
	pid=$(cat "$pidfile")
	if kill -0 "$pid" 2>/dev/null; then
		kill "$pid" 2>/dev/null
		for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$pid" 2>/dev/null || true
	fi
	rm -f "$pidfile"
}

# 0. What node-up.sh made through the API for the node's pods (the cluster
# DNS), so that nothing recreates them below.
kc -n kube-system delete deployment,service,configmap,serviceaccount -l "$node_managed_label" \
	--wait=false >/dev/null 2>&1
# 1. The pods, through the kubelet while it runs: it stops their containers
# and the CNI plugin releases their addresses and network namespaces.
if node_alive kubelet && kc get node "$node_name" >/dev/null 2>&1; then
	kc cordon "$node_name" >/dev/null 2>&1
	kc delete pods --all-namespaces --field-selector "spec.nodeName=$node_name" \
		--grace-period=1 --wait=false >/dev/null 2>&1
	for _ in $(seq 1 100); do
		[ -z "$(ctr_ tasks ls -q 2>/dev/null)" ] && break
		sleep 0.3
	done
fi
# 2. The agents and the kubelet; the Node object goes too, so nothing is
# scheduled onto a node that is gone, and so do the `kubernetes` Service's
# endpoints and node-up.sh's RBAC.
for name in kube-router kube-proxy kubelet; do stop "$name"; done
kc delete node "$node_name" --ignore-not-found >/dev/null 2>&1
kc -n default delete endpointslice kubernetes --ignore-not-found >/dev/null 2>&1
kc delete clusterrole,clusterrolebinding -l "$node_managed_label" >/dev/null 2>&1

# 3. What the kubelet left to containerd: every task killed, every sandbox
# torn down, then containerd itself and the shims it started.
if node_alive containerd; then
	for task in $(ctr_ tasks ls -q 2>/dev/null); do
		ctr_ tasks kill -s SIGKILL "$task" >/dev/null 2>&1
	done
	sleep 0.5
	for task in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$task" >/dev/null 2>&1; done
fi
stop containerd
# The shims outlive containerd by design; ours are the ones started with
# its socket.
for proc in /proc/[0-9]*; do
	cmdline=$(tr '\0' ' ' 2>/dev/null <"$proc/cmdline") || continue
	case $cmdline in
	*containerd-shim*"$node_containerd_sock"*) kill -9 "${proc#/proc/}" 2>/dev/null ;;
	esac
done

# 4. Mounts under the node's directories and the network namespaces the
# pods had (bind mounts in /run/netns), deepest first.
sleep 0.3
awk '{print $5}' /proc/self/mountinfo | grep -E "^($node_dir|$node_run)/" | sort -r | while read -r m; do
	umount "$m" 2>/dev/null || umount -l "$m"
done
for ns in /run/netns/*; do
	[ -e "$ns" ] || continue
	if ! grep -qx "$(basename "$ns")" "$before/netns" 2>/dev/null; then
		umount "$ns" 2>/dev/null
		rm -f "$ns"
	fi
done

# 5. Network: the bridge (the pods' veths went with their namespaces), then
# the rules kube-proxy, kube-router and the kubelet wrote. Tables that did
# not exist before are deleted whole; in tables that did, only the KUBE-*
# and CNI-* chains and the rules that jump to them are removed.
ip link del "$node_bridge" 2>/dev/null
for v in 4 6; do
	save=iptables-save restore=iptables-restore
	[ $v = 6 ] && save=ip6tables-save restore=ip6tables-restore
	file="$before/iptables"
	[ $v = 6 ] && file="$before/ip6tables"
	for table in $($save 2>/dev/null | sed -n 's/^\*//p'); do
		if grep -qx "\*$table" "$file" 2>/dev/null; then
			$save -t "$table" | grep -vE '(KUBE-|CNI-)' | $restore -T "$table"
		fi
	done
done
nft list tables 2>/dev/null | while read -r _ family name; do
	grep -qx "table $family $name" "$before/nft-tables" 2>/dev/null || nft delete table "$family" "$name"
done
for set in $(ipset list -n 2>/dev/null); do
	grep -qx "$set" "$before/ipsets" 2>/dev/null || ipset destroy "$set" 2>/dev/null
done

# 6. Sysctls as they were.
while IFS== read -r key value; do
	[ "$(sysctl -n "$key" 2>/dev/null)" = "$value" ] || sysctl -qw "$key=$value"
done <"$before/sysctls"

# 7. The pods' cgroups (the kubelet's kubepods tree in every hierarchy),
# deepest first.
for hierarchy in /sys/fs/cgroup /sys/fs/cgroup/*; do
	[ -d "$hierarchy/kubepods" ] || [ -d "$hierarchy/kubepods.slice" ] || continue
	find "$hierarchy/kubepods" "$hierarchy/kubepods.slice" -depth -type d 2>/dev/null | while read -r cg; do
		rmdir "$cg" 2>/dev/null
	done
done

# 8. Files: the node's own, and host paths its parts created.
for p in $node_host_paths; do
	if [ -e "$p" ] && ! grep -qx "$p" "$before/paths" 2>/dev/null; then
		rm -rf "$p"
	fi
done
# Container log links the kubelet made in a /var/log/containers that was
# there before.
for link in /var/log/containers/*; do
	[ -L "$link" ] && case $(readlink "$link") in "$node_dir"/*) rm -f "$link" ;; esac
done
rm -rf "$node_dir"

# 9. The check: the host as node-up.sh found it.
diffs=()
while IFS== read -r key value; do
	now=$(sysctl -n "$key" 2>/dev/null)
	[ "$now" = "$value" ] || diffs+=("sysctl $key is $now, was $value")
done <"$before/sysctls"
[ "$(iptables-save 2>/dev/null | grep -vc '^#')" = "$(grep -vc '^#' "$before/iptables")" ] ||
	diffs+=("iptables-save has $(iptables-save | grep -vc '^#') lines, had $(grep -vc '^#' "$before/iptables")")
[ "$(ip6tables-save 2>/dev/null | grep -vc '^#')" = "$(grep -vc '^#' "$before/ip6tables")" ] ||
	diffs+=("ip6tables-save has $(ip6tables-save | grep -vc '^#') lines, had $(grep -vc '^#' "$before/ip6tables")")
[ "$(ipset list -n 2>/dev/null)" = "$(cat "$before/ipsets")" ] || diffs+=("ipsets differ: $(ipset list -n | tr '\n' ' ')")
[ "$(nft list tables 2>/dev/null)" = "$(cat "$before/nft-tables")" ] || diffs+=("nft tables differ: $(nft list tables | tr '\n' ' ')")
ip link show "$node_bridge" >/dev/null 2>&1 && diffs+=("bridge $node_bridge still exists")
mounts_now=$(awk '{print $5}' /proc/self/mountinfo | sort)
[ "$mounts_now" = "$(cat "$before/mounts")" ] ||
	diffs+=("mounts differ: $(diff <(echo "$mounts_now") "$before/mounts" | grep '^[<>]' | tr '\n' ' ')")
for pidfile in "$node_dir"/*.pid; do [ -f "$pidfile" ] && diffs+=("$pidfile left"); done

if [ ${#diffs[@]} -gt 0 ]; then
	echo "error: node-down could not restore the host fully:" >&2
	printf '  %s\n' "${diffs[@]}" >&2
	echo "  (snapshot kept in $before)" >&2
	exit 1
fi
rm -rf "$node_run"
echo "node down; host restored (sysctls, iptables, ipsets, nft tables, mounts, bridge)"
