#!/usr/bin/env bash
# Dev-only: llama.cpp's own `llama-server`, the peer of the concurrency bench
# (scripts/bench-concurrency.sh). Prints the binary's path.
#
# The source is the llama.cpp vendored in the llama-cpp-python sdist, at the
# version scripts/llama-cpp-venv.sh pins, so the peer server and the parity
# reference are the same llama.cpp. Built like the parity build: Release,
# GGML_NATIVE (this CPU's SIMD, which a fair speed comparison needs), and
# without LLAMA_CURL (the bench hands it a local GGUF; no curl/ssl needed).
#
# Idempotent and cached under ~/.cache/securechat:
# - the binary (llama-server-<version>) and a stamp naming the version and
#   build flags; a run whose stamp matches prints the path and does nothing;
# - built in a temporary directory and moved into place, so an interrupted
#   build never leaves a binary that looks usable;
# - a lock file serialises concurrent runs (a second caller waits for the
#   first build instead of starting its own).
# About 10 minutes on 2 cores.
set -euo pipefail

# One home for the pinned version: the venv script's VERSION line.
VERSION=$(sed -n 's/^VERSION="\(.*\)"$/\1/p' "$(dirname "$0")/llama-cpp-venv.sh")
[ -n "$VERSION" ] || { echo "llama-server: no VERSION= line in scripts/llama-cpp-venv.sh" >&2; exit 1; }
CMAKE_FLAGS="-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON"
STAMP_TEXT="llama-cpp-python $VERSION (vendor/llama.cpp) $CMAKE_FLAGS"

cache="$HOME/.cache/securechat"
bindir="$cache/bin"
bin="$bindir/llama-server-$VERSION"
stamp="$bin.stamp"

ready() {
	[ -x "$bin" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$STAMP_TEXT" ]
}

if ready; then
	echo "$bin"
	exit 0
fi

for tool in python3 cmake cc c++; do
	command -v "$tool" >/dev/null || { echo "llama-server: $tool is required to build llama-server" >&2; exit 1; }
done

mkdir -p "$bindir"
exec 9>"$bin.lock"
flock 9
# Another run may have finished the build while we waited for the lock.
if ready; then
	echo "$bin"
	exit 0
fi

tmp=$(mktemp -d "$bindir/.llama-server-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

echo "llama-server: downloading the llama-cpp-python $VERSION sdist" >&2
# --no-binary for this one package only: with :all:, pip would also build
# every build dependency of the sdist (scikit-build-core, setuptools, ...)
# from source just to read its metadata.
python3 -m pip download --quiet --no-binary llama-cpp-python --no-deps --dest "$tmp/sdist" \
	"llama-cpp-python==$VERSION" >&2 \
	|| { echo "llama-server: pip download llama-cpp-python==$VERSION failed" >&2; exit 1; }
shopt -s nullglob
sdists=("$tmp"/sdist/llama_cpp_python-"$VERSION".tar.gz)
[ "${#sdists[@]}" -eq 1 ] || { echo "llama-server: expected one sdist for $VERSION, got ${#sdists[@]}" >&2; exit 1; }
tar -xzf "${sdists[0]}" -C "$tmp"
src="$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp"
[ -f "$src/CMakeLists.txt" ] || { echo "llama-server: the sdist has no vendor/llama.cpp" >&2; exit 1; }

echo "llama-server: building llama-server from llama.cpp in llama-cpp-python $VERSION (about 10 minutes on 2 cores)" >&2
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
# shellcheck disable=SC2086 # CMAKE_FLAGS is a list of flags
cmake -S "$src" -B "$tmp/build" "${generator[@]}" $CMAKE_FLAGS >&2
# Every core, but polite to other work on the machine.
nice -n 10 cmake --build "$tmp/build" --target llama-server --parallel "$(nproc)" >&2
built="$tmp/build/bin/llama-server"
[ -x "$built" ] || { echo "llama-server: the build produced no $built" >&2; exit 1; }
"$built" --version >&2 || { echo "llama-server: the built binary does not run" >&2; exit 1; }

# The binary first, then the stamp: a stamp only ever names a complete binary.
rm -f "$stamp"
mv "$built" "$bin.tmp.$$"
mv "$bin.tmp.$$" "$bin"
echo "$STAMP_TEXT" >"$stamp"
ready || { echo "llama-server: $bin is not ready after the build" >&2; exit 1; }
echo "$bin"
