#!/usr/bin/env bash
# The shared store for the server's tests (server/tests/shared_state*.rs):
# a redis-server binary (Redis 7.0 from Debian bookworm, built with TLS;
# valkey-server is not packaged there) unpacked from its .deb files into
# ~/.cache/securechat/redis, with a wrapper in ~/.cache/securechat/bin that
# finds the libraries beside it. Nothing is installed system-wide and no
# service is started: the tests start their own instances on free loopback
# ports. Idempotent: does nothing when the wrapper already runs.
# Prints the wrapper's path.
set -euo pipefail
cache="$HOME/.cache/securechat"
dir="$cache/redis"
wrapper="$cache/bin/redis-server"

if [ -x "$wrapper" ] && "$wrapper" --version 2>/dev/null | grep -q '^Redis server'; then
	echo "$wrapper"
	exit 0
fi

# redis-tools holds the server binary (redis-server is a link to
# redis-check-rdb in it); these are its libraries that a plain Debian
# image lacks. libssl3 and libsystemd0 are on every bookworm system.
packages=(redis-tools libjemalloc2 liblzf1)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sudo_cmd=()
[ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
if ! (cd "$work" && apt-get download "${packages[@]}" >/dev/null 2>&1); then
	echo "valkey.sh: apt-get download failed; refreshing the package lists" >&2
	"${sudo_cmd[@]}" apt-get update -qq
	(cd "$work" && apt-get download "${packages[@]}" >/dev/null)
fi
rm -rf "$dir.tmp"
mkdir -p "$dir.tmp" "$cache/bin"
for deb in "$work"/*.deb; do
	dpkg -x "$deb" "$dir.tmp"
done
rm -rf "$dir"
mv "$dir.tmp" "$dir"

# The binary picks its mode by the name it runs under, as the
# redis-server package's own link does.
ln -s redis-check-rdb "$dir/usr/bin/redis-server"
libs="$dir/usr/lib/x86_64-linux-gnu"
[ "$(uname -m)" = aarch64 ] && libs="$dir/usr/lib/aarch64-linux-gnu"
cat >"$wrapper" <<WRAPPER
#!/bin/sh
# Written by scripts/valkey.sh: redis-server from its unpacked .deb files.
LD_LIBRARY_PATH="$libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$dir/usr/bin/redis-server" "\$@"
WRAPPER
chmod +x "$wrapper"
if ! "$wrapper" --version | grep -q '^Redis server'; then
	echo "valkey.sh: the unpacked redis-server does not run (see above)" >&2
	exit 1
fi
echo "$wrapper"
