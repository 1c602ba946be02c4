#!/usr/bin/env bash
# Dev-only: a Python venv with llama-cpp-python (llama.cpp built from source
# with native SIMD), used by the inference parity test and the speed
# comparison. Prints the venv's python path.
#
# Idempotent and cached under ~/.cache/securechat:
# - the venv (venv-llama-cpp) is reused when it imports the pinned version;
# - the wheel pip builds (~10 minutes on 2 cores) is kept in
#   wheels-llama-cpp, so a lost venv is rebuilt in seconds;
# - the venv is assembled in a temporary directory and renamed into place,
#   so an interrupted run never leaves a half-built venv that looks usable;
# - a lock file serialises concurrent runs (a second caller waits for the
#   first build instead of starting its own).
set -euo pipefail

VERSION="0.3.36"
cache="$HOME/.cache/securechat"
venv="${SECURECHAT_LLAMA_VENV:-$cache/venv-llama-cpp}"
wheels="$cache/wheels-llama-cpp"
py="$venv/bin/python"

ready() {
	[ -x "$py" ] && "$py" -c "import llama_cpp, numpy, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null
}

if ready; then
	echo "$py"
	exit 0
fi

command -v python3 >/dev/null || { echo "llama-cpp-venv: python3 is required" >&2; exit 1; }
for tool in cmake cc c++; do
	command -v "$tool" >/dev/null || { echo "llama-cpp-venv: $tool is required to build llama.cpp" >&2; exit 1; }
done

mkdir -p "$(dirname "$venv")" "$wheels"
exec 9>"$venv.lock"
flock 9
# Another run may have finished the venv while we waited for the lock.
if ready; then
	echo "$py"
	exit 0
fi

tmp="$venv.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
rm -rf "$tmp"
python3 -m venv "$tmp"
"$tmp/bin/python" -m pip install --quiet --upgrade pip >&2
if ! ls "$wheels"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
	echo "llama-cpp-venv: building llama-cpp-python $VERSION from source (about 10 minutes on 2 cores)" >&2
	# Every core, but polite to other work on the machine. GGML_NATIVE builds
	# for this CPU's SIMD, which is what a fair speed comparison needs.
	CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" CMAKE_ARGS="-DGGML_NATIVE=ON" nice -n 10 \
		"$tmp/bin/python" -m pip wheel --quiet --no-deps --wheel-dir "$wheels" \
		"llama-cpp-python==$VERSION" >&2
fi
"$tmp/bin/python" -m pip install --quiet --find-links "$wheels" "llama-cpp-python==$VERSION" numpy >&2
# A venv's python finds its site-packages relative to itself, so the rename
# keeps `bin/python` (all callers use) working; pip's entry-point scripts
# would keep the temporary name, which is why nothing here calls them.
rm -rf "$venv"
mv "$tmp" "$venv"
trap - EXIT
ready || { echo "llama-cpp-venv: the venv at $venv does not import llama_cpp $VERSION" >&2; exit 1; }
echo "$py"
