#!/usr/bin/env bash
# tests/cluster/node-restart.sh containerd: restarts one of the real node's
# daemons the way an upgrade or a crash-restart would (SIGTERM, then the same
# command line again), for the chaos tests of tests/node/. The pods'
# containers live on in their shims meanwhile. Needs root and a node from
# node-up.sh for this control plane.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/tests/cluster/state.sh"
. "$root/tests/cluster/node.sh"

what=${1:-}
case $what in
containerd) ;;
*) echo "usage: $0 containerd" >&2; exit 2 ;;
esac
if [ "$(node_owner)" != "$node_dir" ] || ! node_alive containerd; then
	echo "error: no real node of this control plane runs containerd; run 'make node-up'" >&2
	exit 1
fi
pid=$(cat "$node_dir/containerd.pid")
kill "$pid"
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then
	echo "error: containerd ($pid) did not stop within 10 s" >&2
	exit 1
fi
# As node-up.sh launches it: its own session, the lock fd closed, the same
# config; the log goes on in the same file.
setsid containerd --config "$node_dir/containerd.toml" >>"$node_dir/logs/containerd.log" 2>&1 </dev/null 9>&- &
echo $! >"$node_dir/containerd.pid"
for _ in $(seq 1 100); do
	ctr --address "$node_containerd_sock" version >/dev/null 2>&1 && exit 0
	kill -0 "$(cat "$node_dir/containerd.pid")" 2>/dev/null || break
	sleep 0.3
done
echo "error: containerd did not come back; its log ($node_dir/logs/containerd.log) ends:" >&2
tail -n 20 "$node_dir/logs/containerd.log" >&2
exit 1
