#!/usr/bin/env bash
# A CUDA 13.0 toolkit for *building* `--features cuda` on a machine without
# one (no GPU needed): nvcc, NVVM, headers and the CUDA libraries come from
# NVIDIA's PyPI wheels into ~/.cache/securechat/cuda-13.0, plus a link-time
# stand-in for the driver library (libcuda.so, which only a GPU driver
# installs; the real one is loaded at run time). Idempotent. Prints the
# environment to build with:
#
#   eval "$(scripts/cuda-toolkit.sh)"
#   cargo test -p securechat-server --features cuda --test inference_cuda --no-run
#
# The binary then runs on any machine with an NVIDIA driver and the CUDA 13
# libraries (libcublas, libcurand, libcudart) on its library path.
# CUDA_COMPUTE_CAP (default 90, Hopper) picks the GPU generation compiled for.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$HOME/.cache/securechat/cuda-13.0"
wheels=(
	"nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-crt==13.0.88" "nvidia-nvvm==13.0.88"
	"nvidia-cuda-cccl==13.0.85" "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-nvrtc==13.0.88"
	"nvidia-cublas==13.0.2.14" "nvidia-curand==10.4.5.25"
)
stamp="$dest/.wheels"

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${wheels[*]}" ]; then
	command -v python3 >/dev/null || { echo "cuda-toolkit: python3 is required" >&2; exit 1; }
	command -v gcc >/dev/null || { echo "cuda-toolkit: gcc is required (nvcc's host compiler)" >&2; exit 1; }
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	echo "cuda-toolkit: downloading ${#wheels[@]} wheels from PyPI (~650 MB)" >&2
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 \
		-d "$tmp/wheels" "${wheels[@]}" >&2
	for w in "$tmp"/wheels/*.whl; do
		python3 -m zipfile -e "$w" "$tmp/x"
	done
	cuda="$tmp/x/nvidia/cu13"
	chmod +x "$cuda"/bin/* "$cuda"/nvvm/bin/* 2>/dev/null || true
	(
		cd "$cuda/lib"
		for lib in cublas cublasLt curand nvrtc cudart; do
			ln -sf "$(ls "lib$lib.so."* | head -1)" "lib$lib.so"
		done
		# Link-time stand-in for the driver: every cu* entry point cudarc
		# declares, with the real library's soname, so the binary asks for
		# libcuda.so.1 and gets the driver's at run time.
		cudarc_sys() { ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs 2>/dev/null | tail -1 || true; }
		sys=$(cudarc_sys)
		# A fresh machine has only what its builds so far needed: cudarc
		# comes with the cuda feature.
		[ -n "$sys" ] || { (cd "$root" && cargo fetch --locked >&2) && sys=$(cudarc_sys); }
		[ -n "$sys" ] || { echo "cuda-toolkit: cudarc's sources are missing after 'cargo fetch' in $root" >&2; exit 1; }
		{
			grep -o "fn cu[A-Za-z0-9_]*" "$sys" | sed 's/fn //'
			# (versioned entry points, where bindings name them)
			grep -o 'link_name = "[A-Za-z0-9_]*"' "$sys" | sed 's/.*= "//; s/"//' || true
		} | sort -u | awk '{print "void " $1 "(void) {}"}' >"$tmp/cuda_stub.c"
		gcc -shared -fPIC -o libcuda.so -Wl,-soname,libcuda.so.1 "$tmp/cuda_stub.c"
	)
	ln -sfn lib "$cuda/lib64"
	rm -rf "$dest"
	mkdir -p "$(dirname "$dest")"
	mv "$cuda" "$dest"
	printf '%s' "${wheels[*]}" >"$stamp"
fi

cat <<EOF
export CUDA_HOME="$dest"
export PATH="$dest/bin:\$PATH"
export LIBRARY_PATH="$dest/lib\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export CUDARC_CUDA_VERSION=13000
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
EOF
