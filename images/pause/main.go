// pause is the sandbox ("pause") process of hanfs's locally built pod images: it holds a
// pod's namespaces open, so it only has to live until asked to stop. As PID 1 of the pod
// (when the PID namespace is shared) it must also reap orphans, or they pile up as zombies.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		// One SIGCHLD may stand for several exits (signals coalesce): reap until none is left.
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
