#!/usr/bin/env bash
# Dependencies of the web UI's browser tests (server/tests/web_ui.rs):
# headless Chromium from Debian and the node packages pinned by
# tests/web/package-lock.json (playwright-core drives the browser,
# oidc-provider is the test's OpenID Provider). Idempotent: does nothing
# when both are already in place.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

if ! [ -x /usr/bin/chromium ]; then
	echo "web-test-deps: installing chromium (apt)" >&2
	sudo_cmd=()
	[ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
	"${sudo_cmd[@]}" apt-get update -qq
	DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

cd "$root/tests/web"
# npm ci reinstalls from scratch; skip it when node_modules was installed
# from this very lock file (stamp written after a successful install).
stamp=node_modules/.securechat-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
	echo "web-test-deps: npm ci in tests/web" >&2
	npm ci --no-audit --no-fund --loglevel=error
	echo "$want" >"$stamp"
fi
