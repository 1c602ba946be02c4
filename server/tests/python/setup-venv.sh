#!/usr/bin/env bash
# Creates (once) the Python virtual environment with the official OpenAI SDK
# that the server's SDK test drives. Prints the interpreter path.
set -euo pipefail
venv="${SECURECHAT_VENV:-$HOME/.cache/securechat/venv}"
if ! "$venv/bin/python" -c 'import openai' >/dev/null 2>&1; then
	python3 -m venv "$venv" >&2
	"$venv/bin/pip" install --quiet --disable-pip-version-check 'openai>=1.40,<3' >&2
fi
echo "$venv/bin/python"
