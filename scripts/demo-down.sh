#!/usr/bin/env bash
# `make demo-down`: stops what `make demo` started: the real node (its pods,
# the operator's among them; the host restored and checked) and the local
# control plane of .securechat/.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
unset SECURECHAT_STATE_DIR # the demo's cluster is .securechat's (tests/cluster/state.sh)
# down.sh takes the node down first (node-down.sh), then the control plane.
"$root/tests/cluster/down.sh"
rc=$?
rm -rf "$root/.securechat/demo"
exit $rc
