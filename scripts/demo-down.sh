#!/usr/bin/env bash
# `make demo-down`: stops what `make demo` started (the local operator,
# projectors and server, by pid), then the local control plane.
# --keep-cluster stops only the processes (make demo uses it when re-run).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
demo="$root/.securechat/demo"
unset SECURECHAT_STATE_DIR # the demo's cluster is .securechat's (tests/cluster/state.sh)
for pidfile in "$demo"/pids/*; do
	[ -f "$pidfile" ] || continue
	pid=$(cat "$pidfile")
	if kill -0 "$pid" 2>/dev/null; then
		kill "$pid" 2>/dev/null
		for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$pid" 2>/dev/null || true
	fi
	rm -f "$pidfile"
done
rm -rf "$demo/pod"
echo "demo processes stopped"
if [ "${1:-}" != --keep-cluster ]; then
	"$root/tests/cluster/down.sh"
	rm -rf "$demo"
fi
