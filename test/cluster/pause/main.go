// The pod sandbox's process on a real node (containerd's sandbox_image): it holds the pod's
// namespaces and does nothing else. Kubernetes' own pause is C (build/pause/linux/pause.c); this is
// the same contract in Go, so the image builds from the Go toolchain the project already needs:
// exit 0 on SIGINT/SIGTERM, reap any child that is re-parented to it, otherwise sleep.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		os.Stdout.WriteString("pause (agentflow test harness)\n")
		return
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s == syscall.SIGCHLD {
			for {
				var ws syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
			continue
		}
		os.Exit(0)
	}
}
