// The real node's sandbox ("pause") image program (tests/cluster/node-images.sh):
// no registry is reachable here, so the node cannot pull one.
module securechat.dev/tests/cluster/pause

go 1.26.0
