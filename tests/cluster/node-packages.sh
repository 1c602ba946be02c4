#!/usr/bin/env bash
# The real node's Debian packages, installed once: containerd, runc and the
# CNI plugins (node-up.sh), the tools its rules and restore need (iptables,
# ipset, conntrack, nftables) and busybox-static, which node-images.sh packs
# as the tests' probe image. Both scripts call this first, so either may run
# first on a fresh machine. Needs root when anything is missing.
set -euo pipefail

need=()
for cmd in containerd runc ctr iptables ipset conntrack nft; do
	command -v "$cmd" >/dev/null || need+=("$cmd")
done
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
{ [ -x /bin/busybox ] && ! readelf -l /bin/busybox | grep -q "program interpreter"; } || need+=(busybox-static)
[ ${#need[@]} -gt 0 ] || exit 0

if [ "$(id -u)" != 0 ]; then
	echo "error: the real node needs Debian packages (missing: ${need[*]}); run as root to install them" >&2
	exit 1
fi
echo "installing containerd runc containernetworking-plugins iptables ipset conntrack nftables busybox-static (missing: ${need[*]})"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends containerd runc containernetworking-plugins \
	iptables ipset conntrack nftables busybox-static >/dev/null
