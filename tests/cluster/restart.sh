#!/usr/bin/env bash
# Restarts one component of the local control plane with the command line
# up.sh started it with: `restart.sh NAME [--kill] [--down SECONDS]`.
# --kill stops it with SIGKILL (a crash) instead of SIGTERM; --down keeps it
# stopped that long before starting it again. Used by the chaos tests
# (tests: operator/tests/chaos.rs). Its log is appended to.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/tests/cluster/state.sh"
name=${1:?usage: restart.sh NAME [--kill] [--down SECONDS]}
shift
signal=TERM
down=0
while [ $# -gt 0 ]; do
	case $1 in
	--kill) signal=KILL ;;
	--down) down=$2; shift ;;
	*) echo "restart.sh: unknown option $1" >&2; exit 2 ;;
	esac
	shift
done
if [ ! -f "$dir/$name.cmd" ]; then
	echo "error: no command line recorded for $name in $dir (is the cluster up? restart it with make cluster-down cluster-up)" >&2
	exit 1
fi
pid=$(cat "$dir/$name.pid")
kill -s "$signal" "$pid" 2>/dev/null || true
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then
	kill -9 "$pid" 2>/dev/null || true
	sleep 0.2
fi
sleep "$down"
# The binaries are found where up.sh found them.
export PATH="${SECURECHAT_CACHE:-$HOME/.cache/securechat}/bin:$PATH"
if [ "$name" = kwok ]; then
	# The node leases name the dead process (kwok's identity is random per
	# process): free them, or the new one waits out their 40 s before it
	# runs any pod.
	kubectl --kubeconfig "$kubeconfig" -n kube-node-lease \
		delete leases --all --wait=false >/dev/null 2>&1 || true
fi
eval "setsid $(cat "$dir/$name.cmd") >>\"\$dir/logs/\$name.log\" 2>&1 </dev/null &"
echo $! >"$dir/$name.pid"
echo "$name restarted (pid $(cat "$dir/$name.pid"))"
