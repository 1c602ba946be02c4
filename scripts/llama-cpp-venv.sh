#!/usr/bin/env bash
# Dev-only: a Python venv with llama-cpp-python (llama.cpp built from source
# with native SIMD), used by the inference parity checks and the speed
# comparison. Cached in ~/.cache/securechat/venv-llama-cpp; the build takes
# ~8 minutes on 2 cores the first time. Prints the venv's python path.
set -euo pipefail

VERSION="0.3.36"
venv="${SECURECHAT_LLAMA_VENV:-$HOME/.cache/securechat/venv-llama-cpp}"
py="$venv/bin/python"

if [ -x "$py" ] && "$py" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
	echo "$py"
	exit 0
fi

command -v python3 >/dev/null || { echo "llama-cpp-venv: python3 is required" >&2; exit 1; }
rm -rf "$venv"
python3 -m venv "$venv"
"$py" -m pip install --quiet --upgrade pip >&2
# Build with every core but stay polite to other work on the machine.
CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" nice -n 10 \
	"$py" -m pip install --quiet "llama-cpp-python==$VERSION" >&2
echo "$py"
