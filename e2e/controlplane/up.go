package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// The controllers the tests need: workloads, garbage collection, namespaces, service accounts,
// quotas, the root CA every pod's projected volume reads, and pod GC for deleted nodes.
const controllers = "deployment-controller,replicaset-controller,garbage-collector-controller," +
	"namespace-controller,serviceaccount-controller,serviceaccount-token-controller," +
	"resourcequota-controller,root-ca-certificate-publisher-controller," +
	"clusterrole-aggregation-controller,pod-garbage-collector-controller"

type ready struct {
	Kubeconfig string `json:"kubeconfig"`
	AuditLog   string `json:"auditLog"`
	Server     string `json:"server"`
	Token      string `json:"token"`
	CA         string `json:"ca"`
}

func up(args []string) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	dir := fs.String("dir", "", "state directory (certificates, etcd data, logs, kubeconfig)")
	port := fs.Int("port", 0, "the API server's secure port on 127.0.0.1 (0: a free one)")
	verbosity := fs.Int("v", 0, "log verbosity of the components")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("--dir is required")
	}
	if err := os.MkdirAll(filepath.Join(*dir, "logs"), 0o755); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if *port == 0 {
		if *port, err = freePort(); err != nil {
			return err
		}
	}
	pki, err := makePKI(*dir)
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", *port)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() { // the test that started us is gone: stop
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()

	etcdURL, closeEtcd, err := startEtcd(filepath.Join(*dir, "etcd"))
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer closeEtcd()

	// Every request at Metadata level (who, verb, resource, namespace, code): tests read it to
	// compare what a component calls with what its RBAC grants.
	auditPolicy := filepath.Join(*dir, "audit-policy.yaml")
	auditLog := filepath.Join(*dir, "logs", "audit.log")
	if err := os.WriteFile(auditPolicy, []byte("apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n"), 0o644); err != nil {
		return err
	}
	kubeconfigs := map[string]string{}
	for _, user := range []string{"admin", "controller-manager", "scheduler"} {
		path := filepath.Join(*dir, user+".kubeconfig")
		if err := writeKubeconfig(path, server, pki.caFile, pki.tokens[user]); err != nil {
			return err
		}
		kubeconfigs[user] = path
	}
	v := strconv.Itoa(*verbosity)
	procs := &children{}
	defer procs.stopAll()
	if err := procs.start(ctx, *dir, self, "kube-apiserver",
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(*port),
		"--tls-cert-file="+pki.serverCert, "--tls-private-key-file="+pki.serverKey,
		"--client-ca-file="+pki.caFile,
		"--token-auth-file="+pki.tokenFile,
		"--authorization-mode=RBAC",
		"--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,PodSecurity,ResourceQuota,DefaultTolerationSeconds,OwnerReferencesPermissionEnforcement",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+pki.saPub,
		"--service-account-signing-key-file="+pki.saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--allow-privileged=false",
		"--audit-policy-file="+auditPolicy,
		"--audit-log-path="+auditLog,
		"--audit-log-mode=batch",
		"--audit-log-batch-max-wait=200ms",
		"--profiling=false",
		"--v="+v,
	); err != nil {
		return err
	}
	if err := waitReady(ctx, server, pki, 3*time.Minute); err != nil {
		return fmt.Errorf("kube-apiserver: %w (log: %s)", err, filepath.Join(*dir, "logs", "kube-apiserver.log"))
	}
	if err := procs.start(ctx, *dir, self, "kube-controller-manager",
		"--kubeconfig="+kubeconfigs["controller-manager"],
		"--authentication-kubeconfig="+kubeconfigs["controller-manager"],
		"--authorization-kubeconfig="+kubeconfigs["controller-manager"],
		"--secure-port=0",
		"--leader-elect=false",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file="+pki.saKey,
		"--root-ca-file="+pki.caFile,
		"--controllers="+controllers,
		"--concurrent-gc-syncs=20",
		"--profiling=false",
		"--v="+v,
	); err != nil {
		return err
	}
	if err := procs.start(ctx, *dir, self, "kube-scheduler",
		"--kubeconfig="+kubeconfigs["scheduler"],
		"--authentication-kubeconfig="+kubeconfigs["scheduler"],
		"--authorization-kubeconfig="+kubeconfigs["scheduler"],
		"--secure-port=0",
		"--leader-elect=false",
		"--profiling=false",
		"--v="+v,
	); err != nil {
		return err
	}
	// Every pod's projected volume reads kube-root-ca.crt; the controllers are up once it exists.
	if err := waitFor(ctx, 2*time.Minute, func() bool {
		return get(server, pki, "/api/v1/namespaces/default/configmaps/kube-root-ca.crt") == http.StatusOK &&
			get(server, pki, "/api/v1/namespaces/default/serviceaccounts/default") == http.StatusOK
	}); err != nil {
		return fmt.Errorf("kube-controller-manager did not publish the root CA or the default ServiceAccount: %w (log: %s)",
			err, filepath.Join(*dir, "logs", "kube-controller-manager.log"))
	}
	out, err := json.Marshal(ready{Kubeconfig: kubeconfigs["admin"], AuditLog: auditLog, Server: server, Token: pki.tokens["admin"], CA: pki.caFile})
	if err != nil {
		return err
	}
	fmt.Println(string(out))

	select {
	case <-ctx.Done():
		return nil
	case name := <-procs.exited:
		return fmt.Errorf("%s exited (log: %s)", name, filepath.Join(*dir, "logs", name+".log"))
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startEtcd(dir string) (string, func(), error) {
	cfg := embed.NewConfig()
	cfg.Dir = dir
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(filepath.Dir(dir), "logs", "etcd.log")}
	// A test cluster that dies with its test: no fsync (much faster on CI disks).
	cfg.UnsafeNoFsync = true
	// Ports chosen before etcd starts: etcd dials its own advertised client URL, so it must
	// be the real one.
	clientPort, err := freePort()
	if err != nil {
		return "", nil, err
	}
	peerPort, err := freePort()
	if err != nil {
		return "", nil, err
	}
	clientURL, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", clientPort))
	peerURL, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", peerPort))
	cfg.ListenClientUrls = []url.URL{*clientURL}
	cfg.AdvertiseClientUrls = []url.URL{*clientURL}
	cfg.ListenPeerUrls = []url.URL{*peerURL}
	cfg.AdvertisePeerUrls = []url.URL{*peerURL}
	cfg.InitialCluster = "default=" + peerURL.String()
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return "", nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(time.Minute):
		e.Close()
		return "", nil, errors.New("not ready after 1 minute")
	}
	return clientURL.String(), e.Close, nil
}

type children struct {
	mu     sync.Mutex
	cmds   []*exec.Cmd
	exited chan string
}

func (c *children) start(ctx context.Context, dir, self, name string, args ...string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.exited == nil {
		c.exited = make(chan string, 8)
	}
	log, err := os.Create(filepath.Join(dir, "logs", name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(self, append([]string{name}, args...)...)
	cmd.Stdout, cmd.Stderr = log, log
	// If this process dies without cleaning up, the kernel stops the components too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	fmt.Fprintf(os.Stderr, "qis-controlplane: %s started (pid %d)\n", name, cmd.Process.Pid)
	c.cmds = append(c.cmds, cmd)
	go func() {
		_ = cmd.Wait()
		_ = log.Close()
		if ctx.Err() == nil {
			c.exited <- name
		}
	}()
	return nil
}

// stopAll stops the components in reverse order (scheduler, controller manager, API server).
func (c *children) stopAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.cmds) - 1; i >= 0; i-- {
		p := c.cmds[i].Process
		_ = p.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _, _ = p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = p.Kill()
		}
	}
}

func client(pki *pkiFiles) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(pki.caPEM))
	return &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
	}
}

func get(server string, pki *pkiFiles, path string) int {
	req, err := http.NewRequest(http.MethodGet, server+path, nil)
	if err != nil {
		return 0
	}
	req.Header.Set("Authorization", "Bearer "+pki.tokens["admin"])
	resp, err := client(pki).Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func waitReady(ctx context.Context, server string, pki *pkiFiles, limit time.Duration) error {
	return waitFor(ctx, limit, func() bool { return get(server, pki, "/readyz") == http.StatusOK })
}

func waitFor(ctx context.Context, limit time.Duration, ok func() bool) error {
	deadline := time.Now().Add(limit)
	for {
		if ok() {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func writeKubeconfig(path, server, ca, token string) error {
	body := strings.Join([]string{
		"apiVersion: v1",
		"kind: Config",
		"clusters:",
		"- name: qis",
		"  cluster:",
		"    server: " + server,
		"    certificate-authority: " + ca,
		"users:",
		"- name: qis",
		"  user:",
		"    token: " + token,
		"contexts:",
		"- name: qis",
		"  context:",
		"    cluster: qis",
		"    user: qis",
		"    namespace: default",
		"current-context: qis",
		"",
	}, "\n")
	return os.WriteFile(path, []byte(body), 0o600)
}
