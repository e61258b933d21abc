//! Test support shared by the crates' integration tests.
//!
//! [`NatsServer`] starts a real `nats-server` (2.15.1, installed by `scripts/install-tools.sh`)
//! with JetStream on a free loopback port and a temporary store, and can stop and restart it on
//! the same port and store to inject faults. Nothing here sleeps for synchronization: readiness
//! is polled with a deadline.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `nats-server` is: `$QIS_NATS_SERVER`, else `.tools/venv/bin/nats-server` of this
/// workspace, else `nats-server` on `PATH`.
pub fn nats_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("QIS_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let local = workspace_root().join(".tools/venv/bin/nats-server");
    if local.exists() {
        return local;
    }
    PathBuf::from("nats-server")
}

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A free TCP port on 127.0.0.1 (bound and released; the OS does not hand it out again at once).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running nats-server with JetStream; killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    config: Option<PathBuf>,
}

impl NatsServer {
    /// Starts a server on a free port with a fresh store.
    pub fn start() -> NatsServer {
        Self::start_with_config(None)
    }

    /// Starts a server with an extra config file (auth, TLS), on a free port.
    pub fn start_with_config(config: Option<PathBuf>) -> NatsServer {
        let store = tempfile::tempdir().expect("temp store");
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            store,
            config,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(nats_server_binary());
        cmd.args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-sd",
        ])
        .arg(self.store.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(c) = &self.config {
            cmd.arg("-c").arg(c);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {:?}: {e} (run scripts/install-tools.sh)",
                nats_server_binary()
            )
        });
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        wait_for(Duration::from_secs(10), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        })
        .expect("nats-server did not listen within 10 s");
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server at once (SIGKILL), keeping its store.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls the async `f` every 100 ms until it returns `Some`, or panics after `timeout` naming
/// what it waited for.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
