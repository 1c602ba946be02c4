#!/usr/bin/env bash
# Builds the local control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl), helm, kwok, the NetworkPolicy evaluator (np-guard's
# k8snetpolicy), promtool (alert-rule tests), the Prometheus server and
# Alertmanager (alert delivery tests), crane (daemonless image builds) and
# kstatus (what GitOps health checks make of our resources' status), and for
# the real node (make node-up) kubelet, kube-proxy and
# kube-router, CoreDNS, prometheus-adapter, from Go modules into
# ~/.cache/securechat/bin. Each binary is stored under a name with its version
# and a hash of what its build list and flags come from, and linked to its
# plain name: a version bump, a go.mod/go.work change or a new flag rebuilds,
# and a rerun is a no-op.
#
# Most of them share one build list, the workspace ./go.work (see there for
# the four that cannot), so Go's build cache compiles each package of
# k8s.io/api, client-go, grpc, otel ... once instead of once per tool's own
# versions: the cold build's Go sources went from 352 MB to 273 MB.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${SECURECHAT_CACHE:-$HOME/.cache/securechat}
bin="$cache/bin"
mkdir -p "$bin"

export GOTOOLCHAIN=local CGO_ENABLED=0
workspace="$here/go.work"
# Two cores here: more parallel link jobs only add memory pressure.
jobs=${GO_BUILD_JOBS:-2}

k8s_version=v1.37.2
etcd_version=v3.6.16
helm_version=v4.3.1
kwok_version=v0.7.0
netpol_version=v1.4.4
# v0.316.0 is Prometheus 3.16.0 (go 1.26.7).
promtool_version=v0.316.0 promtool_release=3.16.0
crane_version=v0.22.1
alertmanager_version=v0.35.0
kube_router_version=v2.1.0
coredns_version=v1.15.0
# prometheus-adapter: serves custom.metrics.k8s.io from Prometheus for the
# HPA test on the real node (tests/node/autoscaling.rs).
prometheus_adapter_version=v0.12.0
# kstatus (sigs.k8s.io/cli-utils): the status GitOps tools compute; our
# wrapper main (tests/cluster/kstatus) prints it for one object.
kstatus_version=v0.37.2

command -v go >/dev/null || { echo "error: Go is required to build the control plane (go 1.26+)" >&2; exit 1; }

# The wrapper modules in the workspace (go.work's use lines).
workspace_dirs() { sed -n 's|^\t\./\(.*\)$|\1|p' "$workspace"; }
in_workspace() { workspace_dirs | grep -qx "$1"; }

# What a binary's build depends on besides Go's module cache: its wrapper
# module's files (for the workspace's members every member's go.mod and
# go.sum, and the workspace's own files), the package and the flags.
build_hash() {
	local dir=$1 pkg=$2 ldflags=$3 tags=$4 files d
	if in_workspace "$dir"; then
		files=("$workspace" "$workspace.sum")
		for d in $(workspace_dirs); do files+=("$here/$d"/go.mod "$here/$d"/go.sum); done
	else
		files=("$here/$dir"/go.mod "$here/$dir"/go.sum)
	fi
	files+=("$here/$dir"/*.go)
	{ cat "${files[@]}" 2>/dev/null; echo "$pkg|$ldflags|$tags"; } | sha256sum | cut -c1-8
}

# binary_file NAME VERSION MODULE_DIR PACKAGE LDFLAGS TAGS: its name in $bin.
binary_file() { echo "$1-$2-$(build_hash "$3" "$4" "$5" "$6")"; }

# build NAME VERSION MODULE_DIR PACKAGE [LDFLAGS [TAGS]]
build() {
	local name=$1 version=$2 dir=$3 pkg=$4 ldflags=${5:-} tags=${6:-}
	local file
	file=$(binary_file "$name" "$version" "$dir" "$pkg" "$ldflags" "$tags")
	local target="$bin/$file"
	if [ -x "$target" ]; then
		ln -sfn "$file" "$bin/$name"
		return
	fi
	echo "building $name $version ..."
	local start=$SECONDS gowork=off goflags=-mod=mod
	# A workspace's build list is fixed by go.work.sum: -mod=mod is refused there.
	if in_workspace "$dir"; then gowork=$workspace goflags=; fi
	(cd "$here/$dir" && GOWORK=$gowork GOFLAGS=$goflags go build -p "$jobs" -trimpath -tags "$tags" -ldflags "-s -w $ldflags" -o "$target.tmp" "$pkg")
	mv "$target.tmp" "$target"
	ln -sfn "$file" "$bin/$name"
	# Earlier builds of this tool: the disk they hold is all they give now.
	find "$bin" -maxdepth 1 -name "$name-v*" ! -name "$file" ! -name "*.tmp" -delete
	echo "built $name $version in $((SECONDS - start))s"
}

k8s_ldflags() {
	local v=${k8s_version#v} minor
	minor=$(echo "$v" | cut -d. -f2)
	local flags=""
	for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		flags+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=$minor"
		flags+=" -X $p.gitCommit=0000000000000000000000000000000000000000 -X $p.gitTreeState=clean"
		flags+=" -X $p.buildDate=2026-01-01T00:00:00Z"
	done
	echo "$flags"
}

# Which tools: all (default), a space-separated list of names, `cluster`
# (all but the real node's) or `node` (the real node's, which only
# `make node-up` needs: scripts/test.sh builds them in the background while
# cargo builds and tests).
only=${1:-all}
node_tools="kubelet kube-proxy kube-router coredns pause prometheus prometheus-adapter"
want() {
	case $only in
	all) return 0 ;;
	node) [[ " $node_tools " == *" $1 "* ]] ;;
	cluster) [[ " $node_tools " != *" $1 "* ]] ;;
	*) [[ " $only " == *" $1 "* ]] ;;
	esac
}

want etcd && build etcd "$etcd_version" etcd go.etcd.io/etcd/server/v3
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
	want "$cmd" && build "$cmd" "$k8s_version" kubernetes "k8s.io/kubernetes/cmd/$cmd" "$(k8s_ldflags)"
done
want helm && build helm "$helm_version" helm helm.sh/helm/v4/cmd/helm "-X helm.sh/helm/v4/internal/version.version=$helm_version"
want kwok && build kwok "$kwok_version" kwok sigs.k8s.io/kwok/cmd/kwok "-X sigs.k8s.io/kwok/pkg/consts.Version=$kwok_version"
want k8snetpolicy && build k8snetpolicy "$netpol_version" netpol github.com/np-guard/netpol-analyzer/cmd/netpolicy
# promtool's main package sets its version through prometheus/common. The
# tests only check and unit-test rule files: remove_all_sd leaves out the
# service-discovery plugins (cloud SDKs), most of the build.
want promtool && build promtool "$promtool_version" promtool github.com/prometheus/prometheus/cmd/promtool "-X github.com/prometheus/common/version.Version=$promtool_release" remove_all_sd
# The Prometheus server for scraping the real node's pods and firing the
# shipped rules into Alertmanager: same module as promtool, with only the
# Kubernetes service discovery (plus static and file targets, always built).
want prometheus && build prometheus "$promtool_version" promtool github.com/prometheus/prometheus/cmd/prometheus "-X github.com/prometheus/common/version.Version=$promtool_release" remove_all_sd,enable_kubernetes_sd
want crane && build crane "$crane_version" crane github.com/google/go-containerregistry/cmd/crane "-X github.com/google/go-containerregistry/cmd/crane/cmd.Version=$crane_version"
# Alertmanager (tests/alerts_delivery.rs): delivers the shipped rules'
# alerts to the chart's webhook adapter. Its module zip lacks the npm-built
# web UI that its ui package embeds (see alertmanager/go.mod): build from a
# copy with a README in the UI's place, made once per version.
alertmanager_pkg=github.com/prometheus/alertmanager/cmd/alertmanager
alertmanager_ldflags="-X github.com/prometheus/common/version.Version=${alertmanager_version#v}"
alertmanager_source() {
	local src="$here/alertmanager/src" stamp="$here/alertmanager/src/.securechat-version"
	[ -x "$bin/$(binary_file alertmanager "$alertmanager_version" alertmanager "$alertmanager_pkg" "$alertmanager_ldflags" "")" ] && return
	[ "$(cat "$stamp" 2>/dev/null)" = "$alertmanager_version" ] && return
	local dir
	dir=$(cd / && GOFLAGS= go mod download -json "github.com/prometheus/alertmanager@$alertmanager_version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
	[ -d "$dir" ] || { echo "error: cannot download github.com/prometheus/alertmanager@$alertmanager_version" >&2; exit 1; }
	rm -rf "$src" "$src.tmp"
	cp -r "$dir" "$src.tmp"
	chmod -R u+w "$src.tmp"
	for ui in elm mantine; do
		mkdir -p "$src.tmp/ui/app/dist/$ui"
		echo "The web UI is not built (npm); the API serves under /api/v2." >"$src.tmp/ui/app/dist/$ui/README.txt"
	done
	echo "$alertmanager_version" >"$src.tmp/.securechat-version"
	mv "$src.tmp" "$src"
}
want alertmanager && alertmanager_source && build alertmanager "$alertmanager_version" alertmanager "$alertmanager_pkg" "$alertmanager_ldflags"
# The real node's NetworkPolicy enforcer (make node-up): kube-router's
# policy controller. kube-network-policies needs CONFIG_NFT_QUEUE, which
# this kernel lacks (see tests/cluster/node-up.sh).
want kube-router && build kube-router "$kube_router_version" kube-router github.com/cloudnativelabs/kube-router/v2/cmd/kube-router "-X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$kube_router_version"
# The real node's cluster DNS: CoreDNS with the plugins of coredns/main.go.
want coredns && build coredns "$coredns_version" coredns . "-X github.com/coredns/coredns/coremain.GitCommit=$coredns_version"
# The HPA's custom metrics on the real node: prometheus-adapter, through a
# wrapper module (tests/cluster/prometheus-adapter).
want prometheus-adapter && build prometheus-adapter "$prometheus_adapter_version" prometheus-adapter sigs.k8s.io/prometheus-adapter/cmd/adapter
# What Flux's health checks and other GitOps tools make of our resources'
# status (tests/kstatus.rs).
want kstatus && build kstatus "$kstatus_version" kstatus .
# The real node's sandbox program (tests/cluster/pause).
want pause && build pause v1 pause .
exit 0
