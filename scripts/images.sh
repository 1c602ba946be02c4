#!/usr/bin/env bash
# `make images`: the server and operator images as OCI images, without a
# container engine. The same images as server/Dockerfile and
# operator/Dockerfile: static binaries on an empty base, uid 65532, the
# default model baked into the server image.
#
# How: cargo builds static (musl) binaries; tar writes reproducible layers
# (sorted, root-owned, fixed mtime); crane appends them onto an empty OCI base
# in a loopback registry that lives only for this script, sets user,
# entrypoint, env and labels, and pulls the result out as an OCI layout and
# a tarball (`docker load` / `podman load` accept it) under target/images/.
#
# The server also comes built with CUDA (`--features cuda`), as
# securechat-server-cuda (tag <version>-cuda): a glibc binary with the CUDA
# user-space libraries it links (cuBLAS, cuBLASLt, cuRAND, cudart,
# from the NVIDIA wheels scripts/cuda-toolkit.sh gathers) under
# /usr/local/cuda/lib64, and nothing of the driver: the NVIDIA container
# toolkit mounts libcuda.so.1 into GPU containers. The operator gives it to
# pods with `resources.gpu.count > 0`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$HOME/.cache/securechat/bin:$HOME/.cargo/bin:$PATH"

out="${IMAGE_OUT:-$root/target/images}"
target_dir=${CARGO_TARGET_DIR:-$root/target}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
# Layer mtimes and the creation label come from the commit, so two builds of
# one commit give identical layers.
epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
# shellcheck source=lib/default-model.sh
. scripts/lib/default-model.sh
model="$DEFAULT_MODEL"
musl=x86_64-unknown-linux-musl
# Knobs for a quick local check of the pipeline: IMAGE_LINKAGE=glibc forces
# the glibc fallback, IMAGE_CARGO_PROFILE=dev reuses the test build's
# dependencies. Released images use the defaults (musl, release).
# IMAGE_BIN_DIR=DIR packs the binaries already built there as they are
# (glibc, with their libraries) and builds nothing: the real test node's
# images (tests/cluster/node-images.sh) reuse the test build's binaries
# instead of a cold musl build. IMAGE_OUT moves the output (default
# target/images). The CUDA image: IMAGE_CUDA_BIN=FILE packs a server
# already built with `--features cuda` (glibc); IMAGE_CUDA=0, or
# IMAGE_BIN_DIR without IMAGE_CUDA_BIN (the real test node has no GPU),
# leaves it out; otherwise it is built here (slow: nvcc compiles candle's
# kernels once per target directory).
profile=${IMAGE_CARGO_PROFILE:-release}
case $profile in
dev) profile_dir=debug ;;
*) profile_dir=$profile ;;
esac

t0=$SECONDS
step() { echo "== $* ($((SECONDS - t0))s)"; }

tests/cluster/build-tools.sh crane
scripts/fetch-model.sh

# Where the containers find the CUDA libraries (LD_LIBRARY_PATH in the
# image), and the GPU generation compiled for (see scripts/lib/cuda.sh).
# shellcheck source=lib/cuda.sh
. scripts/lib/cuda.sh
cuda_lib_dir=$CUDA_IMAGE_LIB_DIR
cuda_compute_cap=$CUDA_IMAGE_COMPUTE_CAP
cuda_bin=""
if [ -n "${IMAGE_CUDA_BIN:-}" ]; then
	[ -x "$IMAGE_CUDA_BIN" ] || { echo "images: IMAGE_CUDA_BIN=$IMAGE_CUDA_BIN is not an executable" >&2; exit 1; }
	cuda_bin=$IMAGE_CUDA_BIN
elif [ "${IMAGE_CUDA:-1}" != 0 ] && [ -z "${IMAGE_BIN_DIR:-}" ]; then
	step "cargo build --profile $profile --features cuda (CUDA_COMPUTE_CAP=$cuda_compute_cap)"
	(
		# The toolkit's environment (nvcc on PATH, its libraries on
		# LIBRARY_PATH) for this build only, not the CPU ones below.
		eval "$(scripts/cuda-toolkit.sh)"
		CUDA_COMPUTE_CAP=$cuda_compute_cap CARGO_PROFILE_RELEASE_STRIP=symbols CARGO_PROFILE_RELEASE_DEBUG=false \
			cargo build --profile "$profile" --locked -p securechat-server --features cuda
	)
	# The CPU build below writes the same path: keep this one aside.
	cuda_bin="$target_dir/$profile_dir/securechat-server.cuda"
	cp "$target_dir/$profile_dir/securechat-server" "$cuda_bin"
fi

# Static binaries: the musl target when rustup has it (its self-contained
# libc and crt objects need no musl toolchain on the host); otherwise a
# glibc build with its shared libraries and loader copied into the layer.
if [ -n "${IMAGE_BIN_DIR:-}" ]; then
	step "binaries already built in $IMAGE_BIN_DIR (glibc)"
	for b in securechat-server securechat-operator; do
		[ -x "$IMAGE_BIN_DIR/$b" ] || { echo "images: no $IMAGE_BIN_DIR/$b; build it first (cargo build -p $b)" >&2; exit 1; }
	done
	bin_dir=$IMAGE_BIN_DIR
	linkage=glibc-with-libs
elif [ "${IMAGE_LINKAGE:-musl}" = musl ] && {
	rustup target list --installed 2>/dev/null | grep -qx "$musl" \
		|| rustup target add "$musl" >/dev/null 2>&1
}; then
	# ring and psm compile C for the target: musl-gcc (Debian: musl-tools)
	# builds it against musl's headers; without it the host gcc is close
	# enough for their freestanding C.
	if ! command -v musl-gcc >/dev/null && ! command -v x86_64-linux-musl-gcc >/dev/null; then
		echo "images: no musl-gcc (apt-get install musl-tools); compiling C with the host gcc" >&2
		export CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-gcc}
	fi
	step "cargo build --profile $profile --target $musl"
	# Symbols are stripped: the image is for running, not debugging.
	CARGO_PROFILE_RELEASE_STRIP=symbols CARGO_PROFILE_RELEASE_DEBUG=false \
		cargo build --profile "$profile" --locked --target "$musl" -p securechat-server -p securechat-operator
	bin_dir="$target_dir/$musl/$profile_dir"
	linkage=static-musl
else
	step "cargo build --profile $profile (glibc)"
	CARGO_PROFILE_RELEASE_STRIP=symbols CARGO_PROFILE_RELEASE_DEBUG=false \
		cargo build --profile "$profile" --locked -p securechat-server -p securechat-operator
	bin_dir="$target_dir/$profile_dir"
	linkage=glibc-with-libs
fi

work=$(mktemp -d)
registry_pid=""
cleanup() {
	if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT

# stage DIR BINARY: the binary under /usr/local/bin, plus (glibc build only)
# the shared libraries it loads at their absolute paths.
stage_binary() {
	local dir=$1 bin=$2
	# -s: no symbols in the image (a no-op for the stripped release build).
	install -s -D -m 0755 "$bin" "$dir/usr/local/bin/$(basename "$bin")"
	if [ "$linkage" = glibc-with-libs ]; then
		ldd "$bin" | awk '/=> \//{print $3} /^\t\/lib/{print $1}' | while read -r lib; do
			install -D -m 0755 "$(readlink -f "$lib")" "$dir$lib"
		done
	elif readelf -l "$bin" | grep -q "Requesting program interpreter"; then
		echo "images: $bin is dynamically linked; refusing to put it on an empty base" >&2
		exit 1
	fi
}

# layer DIR TAR: a reproducible tarball of DIR's contents.
layer() {
	tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
		--format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
		-C "$1" -cf "$2" .
	rm -rf "$1"
}

# stage_cuda DIR BINARY: the CUDA build under /usr/local/bin, the CUDA
# libraries it links under $cuda_lib_dir, everything else it links (glibc,
# libstdc++) at its absolute path; libcuda.so.1 (the driver's) stays out.
stage_cuda() {
	local dir=$1 bin=$2 cuda_home
	cuda_home=$(sed -n 's/^export CUDA_HOME="\(.*\)"$/\1/p' <(scripts/cuda-toolkit.sh))
	install -s -D -m 0755 "$bin" "$dir/usr/local/bin/securechat-server"
	local deps
	deps=$(LD_LIBRARY_PATH="$cuda_home/lib" ldd "$bin")
	if echo "$deps" | grep "not found" | grep -v "libcuda.so.1 " >&2; then
		echo "images: $bin links libraries that are not in $cuda_home/lib nor on this host" >&2
		exit 1
	fi
	echo "$deps" | awk '/=> \//{print $1, $3} /^\t\/lib/{print $1, $1}' | while read -r soname lib; do
		case $lib in
		"$cuda_home"/*) install -D -m 0644 "$(readlink -f "$lib")" "$dir$cuda_lib_dir/$soname" ;;
		*) install -D -m 0755 "$(readlink -f "$lib")" "$dir$lib" ;;
		esac
	done
	# No NVRTC (nor the builtins it would dlopen): candle's kernels are PTX
	# compiled when the binary is built, so the binary does not link it
	# (tests/images.rs checks every library it links resolves here).
}

step "layers"
# Base: what distroless/static has and the binaries need: the nonroot user
# (65532), CA certificates (OIDC discovery and JWKS over HTTPS), /tmp.
mkdir -p "$work/base/etc/ssl/certs" "$work/base/tmp"
chmod 1777 "$work/base/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$work/base/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$work/base/etc/group"
cp /etc/ssl/certs/ca-certificates.crt "$work/base/etc/ssl/certs/ca-certificates.crt"
chmod 0644 "$work/base/etc/passwd" "$work/base/etc/group" "$work/base/etc/ssl/certs/ca-certificates.crt"
layer "$work/base" "$work/base.tar"

# The model changes far less often than the binary: its own layer, below.
# A hard link where possible: the model is 100 MB, disk here is shared.
mkdir -p "$work/model$EMBEDDED_MODEL_DIR"
ln "$model" "$work/model$EMBEDDED_MODEL_DIR/" 2>/dev/null \
	|| install -m 0644 "$model" "$work/model$EMBEDDED_MODEL_DIR/"
layer "$work/model" "$work/model.tar"

stage_binary "$work/server" "$bin_dir/securechat-server"
layer "$work/server" "$work/server.tar"
stage_binary "$work/operator" "$bin_dir/securechat-operator"
layer "$work/operator" "$work/operator.tar"
if [ -n "$cuda_bin" ]; then
	stage_cuda "$work/server-cuda" "$cuda_bin"
	# The libraries (~1 GB) change with the toolkit, the binary with every
	# commit: two layers, so a new binary is a small pull.
	mkdir -p "$work/cuda-libs/usr/local/cuda"
	mv "$work/server-cuda$cuda_lib_dir" "$work/cuda-libs$cuda_lib_dir"
	layer "$work/cuda-libs" "$work/cuda-libs.tar"
	layer "$work/server-cuda" "$work/server-cuda.tar"
fi

step "images (crane $(crane version))"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# In memory: the registry only lives for this build.
crane registry serve --address "127.0.0.1:$port" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 50); do
	curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
	sleep 0.1
done
registry="127.0.0.1:$port"

created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
labels=(
	-l "org.opencontainers.image.version=$version"
	-l "org.opencontainers.image.revision=$revision"
	-l "org.opencontainers.image.created=$created"
	-l "org.opencontainers.image.licenses=Apache-2.0"
	-l "org.opencontainers.image.source=https://github.com/securechat/securechat"
	-l "dev.securechat.linkage=$linkage"
)

# build_image NAME TITLE DESCRIPTION ENTRYPOINT CMD MUTATE_ARGS... LAYERS...
# (IMAGE_TAG_SUFFIX=-cuda tags it <version>-cuda)
build_image() {
	local name=$1 title=$2 description=$3 entrypoint=$4 cmd=$5
	shift 5
	local extra=() layers=()
	while [ $# -gt 0 ]; do
		case $1 in
		-f) layers+=(-f "$2"); shift 2 ;;
		*) extra+=("$1"); shift ;;
		esac
	done
	local ref="$registry/securechat/${name%-cuda}:$version${IMAGE_TAG_SUFFIX:-}"
	crane append --oci-empty-base "${layers[@]}" -t "$ref" >/dev/null
	crane mutate "$ref" -t "$ref" \
		--set-platform linux/amd64 \
		--user 65532:65532 --workdir / \
		--entrypoint "$entrypoint" --cmd "$cmd" \
		-e PATH=/usr/local/bin -e SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
		-l "org.opencontainers.image.title=$title" \
		-l "org.opencontainers.image.description=$description" \
		"${labels[@]}" "${extra[@]}" >/dev/null
	rm -rf "$out/$name" "$out/$name.tar"
	crane pull --format=oci "$ref" "$out/$name"
	crane pull "$ref" "$out/$name.tar"
	echo "images: $out/$name (OCI layout), $out/$name.tar: $(du -sh "$out/$name" | cut -f1), digest $(crane digest "$ref")"
}

mkdir -p "$out"
# Started bare, the server serves the config mounted where the operator
# mounts it (and says what to pass when there is none); `serve --dev` is a
# local trial with generated keys in /tmp/securechat. The addresses listen
# on every interface, as a container's must.
server_cmd="serve,--config,/etc/securechat/config/config.yaml"
server_env=(
	-e "SECURECHAT_MODEL=$EMBEDDED_MODEL_DIR/$DEFAULT_MODEL_FILE"
	-e SECURECHAT_API_ADDR=0.0.0.0:8000 -e SECURECHAT_WEB_ADDR=0.0.0.0:8501
	-e SECURECHAT_DATA_DIR=/tmp/securechat
)
build_image securechat-server securechat-server \
	"securechat chat server: HTTPS, auth, filters, inference; default model included" \
	/usr/local/bin/securechat-server "$server_cmd" "${server_env[@]}" \
	--exposed-ports 8000,8501 \
	-f "$work/base.tar" -f "$work/model.tar" -f "$work/server.tar"
if [ -n "$cuda_bin" ]; then
	IMAGE_TAG_SUFFIX=-cuda build_image securechat-server-cuda securechat-server-cuda \
		"securechat chat server built with CUDA (the NVIDIA container toolkit provides the driver); default model included" \
		/usr/local/bin/securechat-server "$server_cmd" "${server_env[@]}" \
		-e "LD_LIBRARY_PATH=$cuda_lib_dir" -e NVIDIA_DRIVER_CAPABILITIES=compute,utility \
		-l "dev.securechat.cuda-compute-capability=compute_$cuda_compute_cap (PTX)" \
		-l dev.securechat.linkage=glibc-with-libs \
		--exposed-ports 8000,8501 \
		-f "$work/base.tar" -f "$work/model.tar" -f "$work/cuda-libs.tar" -f "$work/server-cuda.tar"
fi
build_image securechat-operator securechat-operator \
	"securechat operator: deploys chat models securely on Kubernetes" \
	/usr/local/bin/securechat-operator run \
	--exposed-ports 8080 \
	-f "$work/base.tar" -f "$work/operator.tar"
step "done ($linkage)"
