//! A real Kubernetes control plane for the tests: etcd, kube-apiserver (RBAC, admission with
//! NamespaceLifecycle, ServiceAccount, PodSecurity, ResourceQuota), kube-controller-manager and
//! kube-scheduler, built from the upstream Go modules by `scripts/controlplane.sh` (cached
//! outside the clone) and started by its `up` command.
//!
//! One control plane per test binary ([`ControlPlane::shared`]), a namespace per test. It stops
//! when the test process exits: `up` watches its standard input, which only this process holds.
//! Tools: `kubectl` and `helm` from `.tools/bin` (installed by `scripts/install-tools.sh`).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    /// The state directory (certificates, etcd data, component logs, kubeconfigs).
    pub dir: PathBuf,
    /// The admin kubeconfig (system:masters).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// The CA of the API server's serving certificate.
    pub ca: PathBuf,
    /// The API server's audit log (every request, Metadata level, JSON lines).
    pub audit_log: PathBuf,
    _process: Mutex<(Child, ChildStdin)>,
    _tmp: tempfile::TempDir,
}

/// The line `up` prints once ready.
#[derive(Debug, serde::Deserialize)]
struct Ready {
    kubeconfig: PathBuf,
    #[serde(rename = "auditLog")]
    audit_log: PathBuf,
    server: String,
    ca: PathBuf,
}

/// A tool of `.tools/bin` (else `PATH`).
pub fn tool(name: &str) -> PathBuf {
    let local = crate::workspace_root().join(".tools/bin").join(name);
    if local.exists() {
        local
    } else {
        PathBuf::from(name)
    }
}

/// The control plane binary: `$QIS_CONTROLPLANE`, else what `scripts/controlplane.sh` builds
/// (or finds in its cache).
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("QIS_CONTROLPLANE") {
        return PathBuf::from(p);
    }
    let script = crate::workspace_root().join("scripts/controlplane.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/controlplane.sh");
    assert!(out.status.success(), "scripts/controlplane.sh failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

impl ControlPlane {
    /// Starts a control plane and waits until it is ready (API server ready, root CA and default
    /// ServiceAccount published by the controllers); then installs the CRDs server-side.
    pub fn start() -> ControlPlane {
        let tmp = tempfile::Builder::new()
            .prefix("qis-cp-")
            .tempdir()
            .expect("tmp");
        let dir = tmp.path().to_owned();
        let mut child = Command::new(binary())
            .arg("up")
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the control plane");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(180))
            .unwrap_or_default();
        let ready: Ready = serde_json::from_str(line.trim()).unwrap_or_else(|e| {
            panic!(
                "the control plane did not start ({e}); logs:\n{}",
                tail_logs(&dir)
            )
        });
        let cp = ControlPlane {
            dir,
            kubeconfig: ready.kubeconfig,
            server: ready.server,
            ca: ready.ca,
            audit_log: ready.audit_log,
            _process: Mutex::new((child, stdin)),
            _tmp: tmp,
        };
        cp.install_crds();
        cp
    }

    /// The control plane of this test binary, started by the first test that asks.
    pub fn shared() -> &'static ControlPlane {
        static CP: OnceLock<ControlPlane> = OnceLock::new();
        CP.get_or_init(ControlPlane::start)
    }

    /// Runs `kubectl` as the admin; panics with its output when it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_stdin(args, None)
    }

    /// Runs `kubectl` with `stdin` as its input.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> String {
        match self.try_kubectl(args, stdin) {
            Ok(out) => out,
            Err(e) => panic!("kubectl {}: {e}", args.join(" ")),
        }
    }

    /// Runs `kubectl`: its stdout, or its stderr as the error.
    pub fn try_kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        run_with_input(
            Command::new(tool("kubectl"))
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(args),
            stdin,
        )
    }

    /// Installs the generated CRDs as users do (`kubectl apply --server-side`, validated) and
    /// waits until they are established.
    pub fn install_crds(&self) {
        let crds = crate::workspace_root().join("crds");
        let files: Vec<PathBuf> = ["qis.dev_qisswarms.yaml", "qis.dev_qissubjects.yaml"]
            .iter()
            .map(|f| crds.join(f))
            .collect();
        for f in &files {
            self.kubectl(&["apply", "--server-side", "-f", &f.to_string_lossy()]);
        }
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/qisswarms.qis.dev",
            "crd/qissubjects.qis.dev",
        ]);
    }

    /// Creates namespace `name` with `labels` (`key=value`), e.g. Pod Security levels.
    pub fn namespace(&self, name: &str, labels: &[&str]) {
        self.kubectl(&["create", "namespace", name]);
        if !labels.is_empty() {
            let mut args = vec!["label", "namespace", name, "--overwrite"];
            args.extend_from_slice(labels);
            self.kubectl(&args);
        }
    }

    /// Installs the operator's identity exactly as `helm template` renders it for `release`
    /// (ServiceAccount, ClusterRole, ClusterRoleBinding in `namespace`, with the chart values
    /// `sets`) and writes a kubeconfig in `dir` that authenticates as that ServiceAccount with
    /// a token from the TokenRequest API. Returns the kubeconfig's path and the user name the
    /// API server sees (`system:serviceaccount:<namespace>:<name>`).
    pub fn operator_identity(
        &self,
        release: &str,
        namespace: &str,
        sets: &[&str],
        dir: &Path,
    ) -> (PathBuf, String) {
        let _ = self.try_kubectl(&["create", "namespace", namespace], None);
        let chart = crate::workspace_root().join("charts/qis-operator");
        let mut helm = Command::new(tool("helm"));
        helm.args(["template", release])
            .arg(&chart)
            .args(["-n", namespace])
            .args([
                "--show-only",
                "templates/serviceaccount.yaml",
                "--show-only",
                "templates/rbac.yaml",
            ]);
        for s in sets {
            helm.args(["--set", s]);
        }
        let rendered = run_with_input(&mut helm, None).expect("helm template");
        self.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&rendered));
        let account = self.kubectl(&[
            "get",
            "serviceaccounts",
            "-n",
            namespace,
            "-l",
            &format!("app.kubernetes.io/instance={release}"),
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ]);
        let token = self.kubectl(&[
            "create",
            "token",
            &account,
            "-n",
            namespace,
            "--duration=24h",
        ]);
        let path = dir.join(format!("{release}-{namespace}.kubeconfig"));
        std::fs::write(&path, self.kubeconfig_for(token.trim(), namespace)).expect("kubeconfig");
        (path, format!("system:serviceaccount:{namespace}:{account}"))
    }

    /// What `user` asked of the API server, as the authorizer sees it: (API group, resource
    /// with its subresource, verb), from the audit log. A server-side apply that created its
    /// object (201) counts as `create` too: the server authorizes both.
    pub fn audited_calls(&self, user: &str) -> BTreeSet<(String, String, String)> {
        let text = std::fs::read_to_string(&self.audit_log).unwrap_or_default();
        let mut out = BTreeSet::new();
        for line in text.lines() {
            let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            // A watch still open has only its ResponseStarted event.
            if e["user"]["username"] != user
                || !(e["stage"] == "ResponseComplete" || e["stage"] == "ResponseStarted")
            {
                continue;
            }
            let Some(resource) = e["objectRef"]["resource"].as_str() else {
                continue;
            };
            let resource = match e["objectRef"]["subresource"].as_str() {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.to_owned(),
            };
            let group = e["objectRef"]["apiGroup"].as_str().unwrap_or("").to_owned();
            let verb = e["verb"].as_str().unwrap_or("").to_owned();
            if verb == "patch" && e["responseStatus"]["code"] == 201 {
                out.insert((group.clone(), resource.clone(), "create".to_owned()));
            }
            out.insert((group, resource, verb));
        }
        out
    }

    /// Every event of the audit log so far (JSON).
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.audit_log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// How many requests `user` made, and how many of them wrote (create, update, patch,
    /// delete, deletecollection), from the audit log (each request once, at its completion).
    pub fn request_counts(&self, user: &str) -> (usize, usize) {
        let events = self.audit_events();
        let done = events
            .iter()
            .filter(|e| e["user"]["username"] == user && e["stage"] == "ResponseComplete");
        let mut all = 0;
        let mut writes = 0;
        for e in done {
            all += 1;
            if matches!(
                e["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete" | "deletecollection")
            ) {
                writes += 1;
            }
        }
        (all, writes)
    }

    /// Requests of `user` the API server refused as forbidden (403), as "verb group/resource".
    pub fn forbidden_calls(&self, user: &str) -> Vec<String> {
        let text = std::fs::read_to_string(&self.audit_log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["user"]["username"] == user && e["responseStatus"]["code"] == 403)
            .map(|e| {
                format!(
                    "{} {}/{} {}",
                    e["verb"].as_str().unwrap_or(""),
                    e["objectRef"]["apiGroup"].as_str().unwrap_or(""),
                    e["objectRef"]["resource"].as_str().unwrap_or(""),
                    e["objectRef"]["subresource"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    /// A kubeconfig for this server authenticating with `token`.
    pub fn kubeconfig_for(&self, token: &str, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: qis\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: qis\n  user:\n    token: {token}\ncontexts:\n- name: qis\n  context:\n    cluster: qis\n    user: qis\n    namespace: {namespace}\ncurrent-context: qis\n",
            self.server,
            self.ca.display()
        )
    }

    /// What a person debugging a failed test looks at first: the objects and events of
    /// `namespace` and the tail of each component's log.
    pub fn dump(&self, namespace: &str) -> String {
        let mut out = String::new();
        for args in [
            vec![
                "get",
                "qisswarms,qissubjects,deployments,replicasets,pods,serviceaccounts,roles,rolebindings,leases",
                "-n",
                namespace,
                "-o",
                "wide",
            ],
            vec![
                "get",
                "qisswarms,qissubjects",
                "-n",
                namespace,
                "-o",
                "yaml",
            ],
            vec!["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"],
            vec!["get", "nodes", "--show-labels"],
        ] {
            out.push_str(&format!("$ kubectl {}\n", args.join(" ")));
            match self.try_kubectl(&args, None) {
                Ok(o) | Err(o) => out.push_str(&o),
            }
        }
        out.push_str(&tail_logs(&self.dir));
        out
    }
}

/// Prints [`ControlPlane::dump`] of its namespace when the test it guards fails.
#[derive(Debug)]
pub struct DumpOnFailure<'a> {
    pub cp: &'a ControlPlane,
    pub namespace: String,
}

impl Drop for DumpOnFailure<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "==== control plane state (namespace {}) ====\n{}",
                self.namespace,
                self.cp.dump(&self.namespace)
            );
        }
    }
}

fn run_with_input(cmd: &mut Command, stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{e}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| format!("{e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("{e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn tail_logs(dir: &Path) -> String {
    let mut out = String::new();
    for name in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "etcd",
    ] {
        let path = dir.join("logs").join(format!("{name}.log"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!("---- {} (last 30 lines)\n", path.display()));
        for l in &lines[lines.len().saturating_sub(30)..] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}
