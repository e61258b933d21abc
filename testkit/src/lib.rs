//! Test support shared by the crates' integration tests.
//!
//! [`NatsServer`] starts a real `nats-server` (2.15.1, installed by `scripts/install-tools.sh`)
//! with JetStream on a free loopback port and a temporary store, and can stop and restart it on
//! the same port and store to inject faults. Nothing here sleeps for synchronization: readiness
//! is polled with a deadline.

pub mod controlplane;
pub mod http;
pub mod metrics;
pub mod schema_fuzz;

use std::net::{SocketAddr, TcpStream};
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

/// A free TCP port on 127.0.0.1, chosen below the kernel's ephemeral range.
///
/// Ports from the ephemeral range (what `bind(:0)` hands out) are also the source ports of
/// outgoing connections: a readiness probe can then connect to itself (TCP self-connect) and
/// hold the port the server was about to bind, or a client of another test can take it.
/// Below the range neither can happen; a random start keeps parallel test processes apart.
///
/// A port is taken as free when nothing accepts a connection on it. It is not checked by
/// binding it: a process another thread forks at that moment inherits the probe socket until
/// it execs, and the server about to bind the port would find it in use (seen in CI, and
/// reproduced once in 40 runs of this crate's tests).
pub fn free_port() -> u16 {
    free_port_from(random_seed())
}

/// [`free_port`] with the candidates that `seed` gives, in order.
fn free_port_from(mut seed: u64) -> u16 {
    let (low, _) = ephemeral_range();
    let floor = 10_000u16.min(low.saturating_sub(1_000));
    let span = u64::from(low - floor).max(1);
    for _ in 0..1_000 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let port = floor + ((seed >> 33) % span) as u16;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        match TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return port,
            _ => {}
        }
    }
    panic!("no free loopback port between {floor} and {low}");
}

/// The kernel's ephemeral port range (`/proc/sys/net/ipv4/ip_local_port_range`), Linux's
/// default when unreadable.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .filter(|(low, high)| *low > 2_000 && low <= high)
        .unwrap_or((32_768, 60_999))
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// A binary of this workspace built next to the running test (`target/<profile>/<name>`;
/// tests run from `target/<profile>/deps/`). The test command builds every binary first.
pub fn workspace_binary(name: &str) -> PathBuf {
    let bin = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join(name)))
        .unwrap_or_else(|| PathBuf::from(name));
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}

/// A child process killed (and reaped) when dropped, a failed assertion included.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
    started_once: bool,
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
            started_once: false,
        };
        server.spawn();
        server
    }

    /// Starts the child and waits until it greets with `INFO`. A fresh server whose port was
    /// taken meanwhile (the child exits) moves to another free port; a restart keeps its port.
    fn spawn(&mut self) {
        let fresh = !self.started_once;
        let mut last_error = String::new();
        for _ in 0..5 {
            let log = self.store.path().join("nats-server.log");
            let mut cmd = Command::new(nats_server_binary());
            cmd.args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path().join("js"))
            .arg("-l")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            if let Some(c) = &self.config {
                cmd.arg("-c").arg(c);
            }
            let mut child = cmd.spawn().unwrap_or_else(|e| {
                panic!(
                    "cannot start {:?}: {e} (run scripts/install-tools.sh)",
                    nats_server_binary()
                )
            });
            let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
            let outcome = wait_for(Duration::from_secs(10), || {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(Err(format!("exited with {status}")));
                }
                greets(&addr).then_some(Ok(()))
            });
            match outcome {
                Some(Ok(())) => {
                    self.child = Some(child);
                    self.started_once = true;
                    return;
                }
                Some(Err(e)) => last_error = e,
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = "did not greet within 10 s".into();
                }
            }
            last_error = format!(
                "{last_error}; log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            if fresh {
                self.port = free_port();
            }
        }
        panic!("nats-server did not start: {last_error}");
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the server logged so far (every start and restart, in order).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.store.path().join("nats-server.log")).unwrap_or_default()
    }

    /// Kills the server at once (SIGKILL), keeping its store.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing is answered, as a hung
    /// server; [`NatsServer::resume`] thaws it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &child.id().to_string()])
                .status();
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

/// True when a NATS server answers on `addr` with its `INFO` line (not merely when something
/// accepts the connection).
fn greets(addr: &SocketAddr) -> bool {
    use std::io::Read;
    let Ok(mut stream) = TcpStream::connect_timeout(addr, Duration::from_millis(200)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).is_ok() && &head == b"INFO "
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls the async `f` every 100 ms until it returns `Some`, or panics after `timeout` naming
/// what it waited for.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match poll_for(timeout, f).await {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// [`wait_for`] for async tests: polls the async `f` every 100 ms until it returns `Some`, or
/// `None` once `timeout` has passed (the caller says what it saw).
pub async fn poll_for<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn poll_for_returns_the_first_some_or_none_at_the_deadline() {
        let mut n = 0;
        let got = poll_for(Duration::from_secs(5), || {
            n += 1;
            let v = n;
            async move { (v == 3).then_some(v) }
        })
        .await;
        assert_eq!(got, Some(3));
        let t = std::time::Instant::now();
        let never = poll_for(Duration::from_millis(300), || async { None::<()> }).await;
        assert_eq!(never, None);
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn free_ports_are_below_the_ephemeral_range_spread_and_bindable() {
        let (low, _) = ephemeral_range();
        let ports: std::collections::BTreeSet<u16> = (0..50).map(|_| free_port()).collect();
        assert!(
            ports.iter().all(|p| *p < low),
            "{ports:?} reach the ephemeral range from {low}"
        );
        assert!(ports.len() >= 45, "picks repeat: {ports:?}");
        for p in &ports {
            std::net::TcpListener::bind(("127.0.0.1", *p)).expect("a free port binds");
        }
    }

    /// A port something listens on is not handed out: with the first candidate of a seed
    /// taken, the same seed gives another port. (Not asserted: that it is handed out again once
    /// closed. A process forked meanwhile by a parallel test holds the listener until it execs,
    /// which is why `free_port` never binds what it probes.)
    #[test]
    fn a_listened_port_is_not_free() {
        let first = free_port_from(7);
        let _listener = std::net::TcpListener::bind(("127.0.0.1", first)).expect("bind");
        assert_ne!(free_port_from(7), first);
    }

    /// A port taken by something that accepts but is not NATS: the readiness check must not
    /// be fooled, and the fresh server moves to another port.
    #[test]
    fn a_taken_port_moves_a_fresh_server_elsewhere() {
        let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let taken = squatter.local_addr().expect("addr").port();
        let mut server = NatsServer {
            child: None,
            port: taken,
            store: tempfile::tempdir().expect("temp store"),
            config: None,
            started_once: false,
        };
        server.spawn();
        assert_ne!(server.port(), taken);
        let addr: SocketAddr = ([127, 0, 0, 1], server.port()).into();
        assert!(greets(&addr), "the server on the new port greets");
        assert!(
            !greets(&([127, 0, 0, 1], taken).into()),
            "the squatter does not"
        );
        drop(squatter);
    }
}
