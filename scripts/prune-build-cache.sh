#!/usr/bin/env bash
# Keeps the shared cargo build cache ($CARGO_TARGET_DIR) from growing without
# bound: stale artifacts of old dependency versions pile up there, and a full
# disk makes the linker die with SIGBUS. Past the limit the cache is emptied
# and the next build starts cold.
set -euo pipefail
dir=${CARGO_TARGET_DIR:?}
limit_gib=${SECURECHAT_BUILD_CACHE_GIB:-30}
[ -d "$dir" ] || exit 0
used_kib=$(du -sk "$dir" | cut -f1)
if [ "$used_kib" -gt $((limit_gib * 1024 * 1024)) ]; then
	echo "build cache $dir is over ${limit_gib} GiB; emptying it"
	rm -rf "$dir"
fi
