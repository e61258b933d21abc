// Command qis-controlplane runs a real Kubernetes control plane for the tests: embedded etcd,
// kube-apiserver, kube-controller-manager and kube-scheduler, all from the upstream Go modules
// (the `app` packages of k8s.io/kubernetes, not reimplementations).
//
//	qis-controlplane up --dir DIR [--port PORT]   # everything; prints one JSON line when ready
//	qis-controlplane kube-apiserver FLAGS…        # the upstream commands, as their binaries
//	qis-controlplane kube-controller-manager FLAGS…
//	qis-controlplane kube-scheduler FLAGS…
//
// `up` makes a CA, the API server's serving certificate, a service-account signing key and a
// token file (admin in system:masters; the controller manager and the scheduler as their own
// users, under the bootstrap RBAC policy), starts etcd in its own process and the three
// components as child processes of itself, waits until the API server is ready and the
// controllers have published the root CA, writes DIR/admin.kubeconfig and prints
// {"kubeconfig":…,"server":…,"token":…,"ca":…}. It stops everything on SIGTERM/SIGINT or when its
// standard input closes (the test that started it is gone).
package main

import (
	"fmt"
	"os"

	"k8s.io/component-base/cli"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: qis-controlplane up|kube-apiserver|kube-controller-manager|kube-scheduler [flags]")
		os.Exit(2)
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "up":
		if err := up(args); err != nil {
			fmt.Fprintln(os.Stderr, "qis-controlplane:", err)
			os.Exit(1)
		}
	case "kube-apiserver":
		cmd := apiserver.NewAPIServerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kube-controller-manager":
		cmd := controllermanager.NewControllerManagerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kube-scheduler":
		cmd := scheduler.NewSchedulerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	default:
		fmt.Fprintf(os.Stderr, "qis-controlplane: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}
