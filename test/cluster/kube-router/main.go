// Program kube-router is kube-router v2.10.0's own cmd/kube-router, built from its
// module for agentflow's e2e cluster, where it runs only its network-policy firewall
// (--run-firewall, no router, no service proxy): the NetworkPolicies the chart ships
// are enforced on the real nodes' pods (test/cluster/netpol.ts starts it).
//
// It mirrors cmd/kube-router/kube-router.go of that release but for two things:
// no pprof listener (the tests run it with --health-port=0 and --metrics-port=0, so
// it opens no port at all), and --cleanup-config undoes the firewall's work only
// (its iptables chains and ipsets): upstream's also flushes IPVS and the router's
// routes and tunnels, which this build never made, and which are not its to touch
// on a machine whose Services kube-proxy serves.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/cloudnativelabs/kube-router/v2/pkg/cmd"
	"github.com/cloudnativelabs/kube-router/v2/pkg/controllers/netpol"
	"github.com/cloudnativelabs/kube-router/v2/pkg/options"
	"github.com/cloudnativelabs/kube-router/v2/pkg/version"
	"github.com/spf13/pflag"
	"k8s.io/klog/v2"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "%s\n", err)
		os.Exit(1)
	}
}

func run() error {
	klog.InitFlags(nil)
	config := options.NewKubeRouterConfig()
	config.AddFlags(pflag.CommandLine)
	pflag.Parse()
	// As upstream: klog's flags live on the standard FlagSet (kubernetes/kubernetes#17162).
	if err := flag.CommandLine.Parse([]string{}); err != nil {
		return fmt.Errorf("failed to parse flags: %w", err)
	}
	if err := flag.Set("logtostderr", "true"); err != nil {
		return fmt.Errorf("failed to set flag: %w", err)
	}
	if err := flag.Set("v", config.VLevel); err != nil {
		return fmt.Errorf("failed to set flag: %w", err)
	}
	if config.HelpRequested {
		pflag.Usage()
		return nil
	}
	if config.Version {
		version.PrintVersion(false)
		return nil
	}
	if os.Geteuid() != 0 {
		return errors.New("kube-router needs root to program iptables and ipset")
	}
	if config.CleanupConfig {
		(&netpol.NetworkPolicyController{}).Cleanup()
		return nil
	}
	kubeRouter, err := cmd.NewKubeRouterDefault(config)
	if err != nil {
		return fmt.Errorf("failed to parse kube-router config: %w", err)
	}
	if err := kubeRouter.Run(); err != nil {
		return fmt.Errorf("failed to run kube-router: %w", err)
	}
	return nil
}
