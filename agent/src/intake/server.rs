//! Serves the intake over HTTP/1.1: one task per connection and at most `maxConnections` of
//! them (the next one is answered 503 at once and closed, never queued); a deadline for every
//! request's headers, which is also how long an idle keep-alive connection is kept; an answer
//! that cannot be written for the body timeout (the client does not read) ends the
//! connection; request heads of at most 8 KiB. Refusals are counted by rule like every other.

use crate::config::IntakeLimits;
use crate::metrics::Metrics;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// Largest request head (request line and headers): hyper's smallest buffer; a larger head is
/// answered 431 by hyper and counted as `header_too_large`.
const MAX_HEAD_BYTES: usize = 8192;
const MAX_HEADERS: usize = 48;
/// File descriptors kept for everything but intake connections (NATS, outbox, listener).
const FD_RESERVE: u64 = 64;
/// Pause after a failed accept (out of file descriptors, say) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a connection did, seen from its socket.
#[derive(Debug, Default)]
struct Traffic {
    /// Bytes came in since the last bytes went out (a request begun, not answered).
    unanswered: AtomicBool,
    /// Something was ever written (a request was answered).
    answered: AtomicBool,
    /// An answer could not be written for the write timeout (the client does not read).
    stalled: AtomicBool,
}

/// A socket that reports its traffic and fails a write that makes no progress for
/// `write_timeout` (a client that sends requests and never reads the answers).
#[derive(Debug)]
struct Watched {
    io: TcpStream,
    traffic: Arc<Traffic>,
    write_timeout: Duration,
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.traffic.unanswered.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl Watched {
    /// Records a write's progress; a write pending past the write timeout fails.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match &r {
            Poll::Pending => {
                let timeout = self.write_timeout;
                let stall = self
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if stall.as_mut().poll(cx).is_ready() {
                    self.traffic.stalled.store(true, Ordering::Relaxed);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client did not read its answer",
                    )));
                }
            }
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.stall = None;
                self.traffic.unanswered.store(false, Ordering::Relaxed);
                self.traffic.answered.store(true, Ordering::Relaxed);
            }
            Poll::Ready(_) => self.stall = None,
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The soft limit of open files of this process (Linux), when it can be read.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The connection cap that fits the file descriptors this process may open.
fn connection_cap(limits: &IntakeLimits) -> usize {
    let wanted = limits.max_connections;
    match open_files_limit() {
        Some(fds) if (wanted as u64).saturating_add(FD_RESERVE) > fds => {
            let cap = usize::try_from(fds.saturating_sub(FD_RESERVE).max(1)).unwrap_or(1);
            tracing::warn!(
                max_connections = wanted,
                open_files = fds,
                cap,
                "intake.maxConnections (QIS_INTAKE_MAX_CONNECTIONS) is over the open-files limit: capping it"
            );
            cap
        }
        _ => wanted,
    }
}

/// The answer to a connection over the cap, written without waiting (it fits any socket
/// buffer) before the connection is closed.
fn over_cap_answer(cap: usize) -> Vec<u8> {
    let body = format!(
        "{{\"error\":\"the agent has {cap} connections open, its limit\",\"rule\":\"connection_limit\"}}"
    );
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The rule a connection's end broke, if it was a refusal.
fn rule_of(e: &hyper::Error, traffic: &Traffic) -> Option<&'static str> {
    if traffic.stalled.load(Ordering::Relaxed) {
        Some("write_timeout")
    } else if e.is_timeout() {
        // Hyper's only timeout is the header one: a head begun and not finished, or nothing
        // ever sent. A keep-alive connection idle after its answers simply ends.
        if traffic.unanswered.load(Ordering::Relaxed) {
            Some("header_timeout")
        } else if !traffic.answered.load(Ordering::Relaxed) {
            Some("idle_timeout")
        } else {
            None
        }
    } else if e.is_parse_too_large() {
        Some("header_too_large")
    } else if e.is_parse() {
        Some("malformed_request")
    } else {
        None
    }
}

/// Serves `app` on `listener` until `stop` turns true; connections open then finish their
/// request and close.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: IntakeLimits,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let cap = connection_cap(&limits);
    let slots = Arc::new(Semaphore::new(cap));
    let refusal = over_cap_answer(cap);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "intake accept failed; pausing");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.refused("connection_limit");
            let _ = stream.try_write(&refusal);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let traffic = Arc::new(Traffic::default());
        let io = TokioIo::new(Watched {
            io: stream,
            traffic: traffic.clone(),
            write_timeout: limits.body_timeout,
            stall: None,
        });
        let service = TowerToHyperService::new(app.clone());
        let conn = http.serve_connection(io, service);
        let (metrics, mut stop) = (metrics.clone(), stop.clone());
        metrics.intake_connections.inc();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                match rule_of(&e, &traffic) {
                    Some(rule) => metrics.refused(rule),
                    None => tracing::debug!(error = %e, "intake connection ended"),
                }
            }
            metrics.intake_connections.dec();
            drop(slot);
        });
    }
}
