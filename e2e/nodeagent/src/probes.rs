//! Probes, sent to the container's loopback port whatever port (named or numbered) they name:
//! a process has exactly one, `QIS_LISTEN`.

use k8s_openapi::api::core::v1::Probe;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
            let headers: String = http
                .http_headers
                .iter()
                .flatten()
                .map(|h| format!("{}: {}\r\n", h.name, h.value))
                .collect();
            http_get(port, path, &headers).await
        } else if probe.tcp_socket.is_some() {
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

/// `GET path` over HTTP/1.1: a 2xx or 3xx status is a success, as for the kubelet.
async fn http_get(port: u16, path: &str, headers: &str) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\n{headers}Connection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok());
    matches!(code, Some(200..=399))
}
