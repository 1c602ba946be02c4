#!/usr/bin/env bash
# Stops exactly the processes up.sh started (by pid) and removes their data
# (the control plane of SECURECHAT_STATE_DIR, see state.sh).
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/tests/cluster/state.sh"
[ -d "$dir" ] || { echo "cluster not running"; exit 0; }

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
