// Program coredns is a minimal CoreDNS v1.15.0 build for agentflow's test
// cluster: the cluster-DNS plugins only (bind: it listens on the pod network's host
// address, never on every address of the machine).
//
// It mirrors CoreDNS's own coredns.go, with core/plugin/zplugin.go (the
// blank imports) and core/dnsserver/zdirectives.go (the execution order)
// cut down to this subset. Directives keeps plugin.cfg's relative order.
// metadata, transfer and metrics ("prometheus") are compiled in anyway (the
// kubernetes and cache plugins import them), so they are listed too, where
// plugin.cfg places them. loop, reload, forward etc. are left out.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/metadata"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/transfer"
)

// directives is the execution order, as in plugin.cfg.
var directives = []string{
	"metadata",
	"bind",
	"ready",
	"health",
	"prometheus",
	"errors",
	"log",
	"cache",
	"transfer",
	"hosts",
	"kubernetes",
}

func main() {
	if err := dnsserver.SetDirectives(directives); err != nil {
		panic(err)
	}
	coremain.Run()
}
