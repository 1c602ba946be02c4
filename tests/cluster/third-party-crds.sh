#!/usr/bin/env bash
# The CRDs of the projects securechat renders objects for when they are
# installed, taken from their Go modules (the files the projects ship in
# config/crd): KEDA's ScaledObject, Gateway API (standard channel) and the
# Gateway API Inference Extension's InferencePool. The tests install them
# into the local control plane to check what the operator renders against
# the real schemas. Copied once into ~/.cache/securechat/crds/<module>-<version>/;
# a rerun is a no-op. Prints the directory.
set -euo pipefail

cache=${SECURECHAT_CACHE:-$HOME/.cache/securechat}
out="$cache/crds"
mkdir -p "$out"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod

# KEDA v2.21 needs go 1.27; v2.20.2 is the newest this Go can fetch, and
# ScaledObject is keda.sh/v1alpha1 in both.
keda_version=v2.20.2
gateway_api_version=v1.6.3
inference_extension_version=v1.6.2

command -v go >/dev/null || { echo "error: Go is required to fetch the third-party CRDs (go 1.26+)" >&2; exit 1; }

# fetch NAME MODULE VERSION SUBDIR FILE...
fetch() {
	local name=$1 module=$2 version=$3 subdir=$4
	shift 4
	local dest="$out/$name-$version"
	if [ -f "$dest/.complete" ]; then
		return
	fi
	local dir
	dir=$(go mod download -json "$module@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
	[ -n "$dir" ] || { echo "error: go mod download $module@$version gave no directory" >&2; exit 1; }
	rm -rf "$dest.tmp"
	mkdir -p "$dest.tmp"
	for file in "$@"; do
		install -m 0644 "$dir/$subdir/$file" "$dest.tmp/$file"
	done
	touch "$dest.tmp/.complete"
	rm -rf "$dest"
	mv "$dest.tmp" "$dest"
}

fetch keda github.com/kedacore/keda/v2 "$keda_version" config/crd/bases keda.sh_scaledobjects.yaml
fetch gateway-api sigs.k8s.io/gateway-api "$gateway_api_version" config/crd/standard \
	gateway.networking.k8s.io_gatewayclasses.yaml gateway.networking.k8s.io_gateways.yaml \
	gateway.networking.k8s.io_httproutes.yaml gateway.networking.k8s.io_tlsroutes.yaml \
	gateway.networking.k8s.io_backendtlspolicies.yaml gateway.networking.k8s.io_referencegrants.yaml
fetch inference-extension sigs.k8s.io/gateway-api-inference-extension "$inference_extension_version" config/crd/bases \
	inference.networking.k8s.io_inferencepools.yaml
echo "$out"
