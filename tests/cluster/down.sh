#!/usr/bin/env bash
# Stops exactly the processes up.sh started (by pid) and removes their data
# (the control plane of SECURECHAT_STATE_DIR, see state.sh), and the real
# node of that control plane if one is up (node-down.sh).
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/tests/cluster/state.sh"
# The real node first (make node-up), while the API server can still
# evict its pods; a no-op when this control plane has none.
node_ok=0
"$root/tests/cluster/node-down.sh" || node_ok=$?
[ -d "$dir" ] || { echo "cluster not running"; exit "$node_ok"; }

# Reverse start order: clients first, etcd last.
for name in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
	pidfile="$dir/$name.pid"
	[ -f "$pidfile" ] || continue
	pid=$(cat "$pidfile")
	if kill -0 "$pid" 2>/dev/null; then
		kill "$pid" 2>/dev/null
		for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$pid" 2>/dev/null || true
	fi
	rm -f "$pidfile"
done
rm -rf "$dir" "$kubeconfig"
echo "cluster down"
exit "$node_ok"
