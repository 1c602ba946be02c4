# Sourced by up.sh, down.sh and restart.sh (after they set $root): where a
# local control plane keeps its state. $SECURECHAT_STATE_DIR when set
# (`make test` runs its own cluster in .securechat/test), else .securechat
# (`make cluster-up`, `make demo`). Below it: cluster/ (pids, command lines,
# logs, etcd data, the API server's audit log) and the admin kubeconfig.
# The test harness reads the same variable (test-support's cluster module).
state="${SECURECHAT_STATE_DIR:-$root/.securechat}"
dir="$state/cluster"
kubeconfig="$state/kubeconfig"
