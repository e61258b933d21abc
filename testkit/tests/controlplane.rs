//! The control plane the tests stand on is the real thing: it enforces RBAC, admission
//! (Pod Security), the CRD schema and CEL, and its controllers run Deployments into Pods.

use qis_testkit::controlplane::ControlPlane;

/// Proves RBAC is enforced: a ServiceAccount without grants is forbidden, and allowed once
/// bound to a role.
#[test]
fn rbac_is_enforced() {
    let cp = ControlPlane::shared();
    cp.namespace("rbac", &[]);
    cp.kubectl(&["create", "serviceaccount", "nobody", "-n", "rbac"]);
    let token = cp.kubectl(&["create", "token", "nobody", "-n", "rbac"]);
    let dir = tempfile::tempdir().expect("tmp");
    let kc = dir.path().join("nobody.kubeconfig");
    std::fs::write(&kc, cp.kubeconfig_for(token.trim(), "rbac")).expect("kubeconfig");
    let as_nobody = |args: &[&str]| {
        std::process::Command::new(qis_testkit::controlplane::tool("kubectl"))
            .arg("--kubeconfig")
            .arg(&kc)
            .args(args)
            .output()
            .expect("kubectl")
    };
    let denied = as_nobody(&["get", "configmaps", "-n", "rbac"]);
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    cp.kubectl(&[
        "create",
        "role",
        "read-cm",
        "-n",
        "rbac",
        "--verb=list",
        "--resource=configmaps",
    ]);
    cp.kubectl(&[
        "create",
        "rolebinding",
        "read-cm",
        "-n",
        "rbac",
        "--role=read-cm",
        "--serviceaccount=rbac:nobody",
    ]);
    let allowed = qis_testkit::wait_for(std::time::Duration::from_secs(10), || {
        as_nobody(&["get", "configmaps", "-n", "rbac"])
            .status
            .success()
            .then_some(())
    });
    assert!(allowed.is_some(), "the binding takes effect");
}

/// Proves the CRDs' schema and CEL are enforced at admission: the object that crashed the
/// operator once (a window past every int64) is refused, a 10-year window is admitted and
/// defaults are filled in by the server.
#[test]
fn the_api_server_refuses_an_out_of_range_duration() {
    let cp = ControlPlane::shared();
    cp.namespace("durations", &[]);
    let subject = |window: &str| {
        format!(
            "apiVersion: qis.dev/v1alpha1\nkind: QisSubject\nmetadata: {{name: s{}, namespace: durations}}\nspec:\n  swarmRef: {{name: campus}}\n  domain: hvac\n  synthesis: {{window: \"{window}\"}}\n",
            window.len()
        )
    };
    let err = cp
        .try_kubectl(
            &["apply", "--server-side", "-f", "-"],
            Some(&subject("99999999999999999999s")),
        )
        .expect_err("refused");
    assert!(
        err.contains("spec.synthesis.window"),
        "names the field: {err}"
    );
    cp.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        Some(&subject("87600h")),
    );
    let ack_wait = cp.kubectl(&[
        "get",
        "qsub",
        "s6",
        "-n",
        "durations",
        "-o",
        "jsonpath={.spec.consumer.ackWait}",
    ]);
    assert_eq!(ack_wait, "30s", "the server applied the schema's default");
}

/// Proves Pod Security admission is on: a pod without the restricted profile's settings is
/// refused in a `restricted` namespace.
#[test]
fn pod_security_is_enforced() {
    let cp = ControlPlane::shared();
    cp.namespace(
        "restricted",
        &["pod-security.kubernetes.io/enforce=restricted"],
    );
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: restricted}\nspec:\n  containers:\n  - {name: c, image: x}\n";
    let err = cp
        .try_kubectl(&["apply", "-f", "-"], Some(pod))
        .expect_err("refused");
    assert!(err.contains("violates PodSecurity"), "{err}");
}
