// Command coredns is CoreDNS with only the plugins the test cluster's DNS
// needs (cluster.local from the Kubernetes API, health/ready probes, a cache),
// built from the CoreDNS Go module pinned in go.mod. Upstream's main imports
// every plugin, including cloud DNS backends with large dependency trees.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"
)

// The plugins in upstream's execution order (core/dnsserver/zdirective.go).
var directives = []string{
	"ready", "health", "errors", "log", "loadbalance", "cache", "template", "kubernetes",
}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
