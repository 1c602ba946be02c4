// Command coredns is CoreDNS with only the plugins the real test node's
// cluster DNS needs (tests/cluster/node-up.sh): Service and pod names from
// the API server, a cache, health and readiness. CoreDNS documents this way
// of choosing plugins at compile time: a main that imports the plugins and
// sets the directive order (plugin.cfg's order, filtered).
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	dnsserver.Directives = []string{"ready", "health", "errors", "log", "cache", "kubernetes"}
}

func main() {
	coremain.Run()
}
