#!/usr/bin/env bash
# The real node's images as image tarballs in target/node-images/ (no
# registry is reachable; node-up.sh imports them into the node's
# containerd):
# - securechat-server and securechat-operator: the layout of `make images`
#   (scripts/images.sh), packed from the binaries the test build already made
#   (cargo's dev profile, glibc with its libraries) instead of a cold static
#   musl build; NODE_IMAGE_BIN_DIR points elsewhere (e.g. a release build).
# - pause: the pods' sandbox (tests/cluster/pause).
# - client: busybox-static, the tests' probe pods (nc, wget, sh, httpd,
#   nslookup).
# - coredns: the cluster DNS (tests/cluster/coredns).
# - prometheus: the Prometheus server (built with promtool's module by
#   build-tools.sh), scraping the model's pods in tests/node/metrics.rs.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
bin="${SECURECHAT_CACHE:-$HOME/.cache/securechat}/bin"
export PATH="$bin:$HOME/.cargo/bin:$PATH"
out="$root/target/node-images"
mkdir -p "$out"
t0=$SECONDS

bin_dir=${NODE_IMAGE_BIN_DIR:-}
if [ -z "$bin_dir" ]; then
	# Dev profile: the test build's; dependencies and kernels are optimised
	# (Cargo.toml), so the server answers as fast as the tests need.
	cargo build -q -p securechat-server -p securechat-operator
	bin_dir="${CARGO_TARGET_DIR:-$root/target}/debug"
fi
IMAGE_BIN_DIR="$bin_dir" IMAGE_OUT="$out" scripts/images.sh >"$out/images.log" 2>&1 \
	|| { cat "$out/images.log" >&2; exit 1; }
# Only the tarballs are imported; the OCI layouts would double the disk use.
rm -rf "$out/securechat-server" "$out/securechat-operator"

work=$(mktemp -d)
registry_pid=""
cleanup() {
	local rc=$?
	if [ $rc -ne 0 ] && [ -f "$work/crane.log" ]; then cat "$work/crane.log" >&2; fi
	if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
crane registry serve --address "127.0.0.1:$port" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 50); do
	curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
	sleep 0.1
done

# small_image NAME DIR ENTRYPOINT: DIR's contents as one layer, run as
# ENTRYPOINT by uid 65532.
small_image() {
	local name=$1 dir=$2 entrypoint=$3 ref="127.0.0.1:$port/securechat/$1:node"
	tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$dir" -cf "$work/$name.tar" .
	crane append --oci-empty-base -f "$work/$name.tar" -t "$ref" >/dev/null 2>>"$work/crane.log"
	crane mutate "$ref" -t "$ref" --set-platform linux/amd64 --user 65532:65532 \
		--entrypoint "$entrypoint" >/dev/null 2>>"$work/crane.log"
	crane pull "$ref" "$out/$name.tar" 2>>"$work/crane.log"
}

mkdir -p "$work/pause"
install -D -m 0755 "$bin/pause" "$work/pause/pause"
small_image pause "$work/pause" /pause

# busybox-static (node-packages.sh installs it) puts a static build here.
tests/cluster/node-packages.sh
busybox=/bin/busybox
mkdir -p "$work/client/bin" "$work/client/tmp"
chmod 1777 "$work/client/tmp"
install -m 0755 "$busybox" "$work/client/bin/busybox"
for applet in sh nc wget sleep cat httpd nslookup; do ln -s busybox "$work/client/bin/$applet"; done
small_image client "$work/client" /bin/sh

mkdir -p "$work/coredns"
install -D -m 0755 "$bin/coredns" "$work/coredns/coredns"
small_image coredns "$work/coredns" /coredns

tests/cluster/build-tools.sh prometheus
if [ ! -x "$bin/prometheus" ]; then
	echo "error: no $bin/prometheus; build it: tests/cluster/build-tools.sh prometheus" >&2
	exit 1
fi
mkdir -p "$work/prometheus"
install -D -m 0755 "$bin/prometheus" "$work/prometheus/prometheus"
small_image prometheus "$work/prometheus" /prometheus

echo "node images in $out ($((SECONDS - t0))s): $(cd "$out" && ls -- *.tar | tr '\n' ' ')"
