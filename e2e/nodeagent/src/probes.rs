//! Probes, sent to the container's loopback port whatever port (named or numbered) they name:
//! a process has exactly one, `QIS_LISTEN`.

use k8s_openapi::api::core::v1::Probe;
use std::path::Path;
use std::time::Duration;

/// Runs `probe` once against `127.0.0.1:port`: true on success.
pub(crate) async fn run(probe: &Probe, port: u16, env: &[(String, String)], cwd: &Path) -> bool {
    let timeout = Duration::from_secs(
        probe
            .timeout_seconds
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(1)
            .max(1),
    );
    let attempt = async {
        if let Some(http) = &probe.http_get {
            let path = http.path.as_deref().unwrap_or("/");
            let headers: Vec<(&str, &str)> = http
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.as_str(), h.value.as_str()))
                .collect();
            http_get(port, path, &headers).await
        } else if probe.tcp_socket.is_some() {
            // A tcpSocket probe is a bare connect, as the kubelet's: no HTTP in it.
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        } else if let Some(exec) = &probe.exec {
            let argv = exec.command.clone().unwrap_or_default();
            let Some((program, args)) = argv.split_first() else {
                return false;
            };
            tokio::process::Command::new(program)
                .args(args)
                .env_clear()
                .envs(env.iter().cloned())
                .current_dir(cwd)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map(|s| s.success())
                .unwrap_or(false)
        } else {
            tracing::warn!("unsupported probe (grpc?): counted as a success");
            true
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(false)
}

/// `GET path` over HTTP/1.1 on a new connection: a 2xx or 3xx status is a success, as for
/// the kubelet (a redirect is not followed). The caller bounds the time.
async fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> bool {
    let Ok(client) = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .user_agent("kube-probe/1.33")
        .build()
    else {
        return false;
    };
    let mut request = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header("accept", "*/*");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    match request.send().await {
        Ok(answer) => matches!(answer.status().as_u16(), 200..=399),
        Err(_) => false,
    }
}
