//! The tests' HTTP client: one [`Http`] per server under test (agent intake, agent or operator
//! metrics, node-agent probes), built on `reqwest`.
//!
//! Every request has a deadline ([`TIMEOUT`] unless set with [`Http::with_timeout`]) and a new
//! connection (no pooling: a test that restarts a server must not reuse a dead socket). A
//! failed connection is an [`Answer`] with status 0, so a poll loop can wait for a server to
//! come up without matching on errors. Tests that must send bytes no HTTP client would (slow
//! heads, malformed requests) keep their raw sockets; everything else goes through here.

use std::time::Duration;

pub use reqwest::header::HeaderMap;
use serde_json::Value;

/// The deadline of a request when none is set.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A server's answer: status 0 when there was none (refused, reset, timed out).
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    /// Reads an answer as it came off a raw socket (a test that sent bytes no client would):
    /// status line, headers, body; status 0 when there is no status line.
    pub fn parse(raw: &[u8]) -> Answer {
        let text = String::from_utf8_lossy(raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .filter(|l| l.starts_with("HTTP/"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0);
        let mut headers = HeaderMap::new();
        for (name, value) in lines.filter_map(|l| l.split_once(':')) {
            if let (Ok(name), Ok(value)) = (
                reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()),
                reqwest::header::HeaderValue::from_str(value.trim()),
            ) {
                headers.append(name, value);
            }
        }
        Answer {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    /// The body as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The rule a refusal names in its JSON body (`{"rule": …}`), empty when none.
    pub fn rule(&self) -> String {
        self.json()["rule"].as_str().unwrap_or_default().to_owned()
    }

    /// A header's value, empty when absent.
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    /// Whether a server answered at all.
    pub fn answered(&self) -> bool {
        self.status != 0
    }
}

/// A client of one server (`http://127.0.0.1:<port>` unless built with [`Http::new`]).
#[derive(Debug, Clone)]
pub struct Http {
    client: reqwest::Client,
    base: String,
    timeout: Duration,
}

impl Http {
    /// A client of the server at `base` (`http://host:port`, no trailing slash).
    pub fn new(base: impl Into<String>) -> Http {
        Http::build(base.into(), TIMEOUT)
    }

    /// A client of the server on loopback `port`.
    pub fn local(port: u16) -> Http {
        Http::new(format!("http://127.0.0.1:{port}"))
    }

    /// The same server with another per-request deadline.
    pub fn with_timeout(&self, timeout: Duration) -> Http {
        Http::build(self.base.clone(), timeout)
    }

    /// The same server over a kept-alive connection: requests made one after another reuse
    /// it (what a throughput bench measures). Clones share the pool; use one per connection.
    pub fn keep_alive(&self) -> Http {
        Http {
            client: Http::builder(self.timeout)
                .build()
                .expect("an HTTP client without TLS builds"),
            base: self.base.clone(),
            timeout: self.timeout,
        }
    }

    fn build(base: String, timeout: Duration) -> Http {
        let client = Http::builder(timeout)
            .pool_max_idle_per_host(0)
            .build()
            // A client with these settings always builds (no TLS backend, no proxy files).
            .expect("an HTTP client without TLS builds");
        Http {
            client,
            base,
            timeout,
        }
    }

    fn builder(timeout: Duration) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .timeout(timeout)
            .tcp_nodelay(true)
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.client.get(self.url(path))).await
    }

    /// `GET path` as JSON, `None` unless it answered 200 with JSON.
    pub async fn get_json(&self, path: &str) -> Option<Value> {
        let a = self.get(path).await;
        (a.status == 200).then(|| a.json()).filter(|v| !v.is_null())
    }

    /// `POST path` with `body` as `application/json` and the extra `headers`.
    pub async fn post(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> Answer {
        self.request("POST", path, body, headers).await
    }

    /// `method path` with `body` as `application/json` (sent with its length even on a `GET`:
    /// a test of a server's body limits needs that) and the extra `headers`. A method that is
    /// not a valid token is no request: status 0.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let Ok(method) = reqwest::Method::from_bytes(method.as_bytes()) else {
            return Answer::default();
        };
        let mut req = self
            .client
            .request(method, self.url(path))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        self.send(req).await
    }

    /// `POST path` with `body` serialized as JSON.
    pub async fn post_json(&self, path: &str, body: &Value) -> Answer {
        self.post(path, body.to_string(), &[]).await
    }

    /// The server's Prometheus exposition at `/metrics`, `None` when it did not answer 200.
    pub async fn metrics(&self) -> Option<crate::metrics::Metrics> {
        let a = self.get("/metrics").await;
        (a.status == 200).then(|| crate::metrics::Metrics::parse(&a.body))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let Ok(resp) = req.send().await else {
            return Answer::default();
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        match resp.text().await {
            Ok(body) => Answer {
                status,
                headers,
                body,
            },
            // The head came but the body broke off: no whole answer.
            Err(_) => Answer::default(),
        }
    }
}

/// The same client for code outside an async runtime (bench drivers, `std::thread`s). Calling
/// it inside a Tokio runtime panics (reqwest's rule): async tests use [`Http`].
pub mod blocking {
    use super::{Answer, TIMEOUT};
    use std::time::Duration;

    /// A blocking client of one server.
    #[derive(Debug, Clone)]
    pub struct Http {
        client: reqwest::blocking::Client,
        base: String,
    }

    impl Http {
        /// A client of the server on loopback `port`.
        pub fn local(port: u16) -> Http {
            Http::with_timeout(port, TIMEOUT)
        }

        /// A client of the server on loopback `port` with a per-request deadline.
        pub fn with_timeout(port: u16, timeout: Duration) -> Http {
            let client = reqwest::blocking::Client::builder()
                .timeout(timeout)
                .pool_max_idle_per_host(0)
                .build()
                .expect("an HTTP client without TLS builds");
            Http {
                client,
                base: format!("http://127.0.0.1:{port}"),
            }
        }

        /// `GET path`.
        pub fn get(&self, path: &str) -> Answer {
            send(self.client.get(format!("{}{path}", self.base)))
        }

        /// `GET path` as JSON, `None` unless it answered 200 with JSON.
        pub fn get_json(&self, path: &str) -> Option<serde_json::Value> {
            let a = self.get(path);
            (a.status == 200).then(|| a.json()).filter(|v| !v.is_null())
        }

        /// `POST path` with `body` as `application/json` and the extra `headers`.
        pub fn post(
            &self,
            path: &str,
            body: impl Into<reqwest::blocking::Body>,
            headers: &[(&str, &str)],
        ) -> Answer {
            self.request("POST", path, body, headers)
        }

        /// [`super::Http::request`], blocking.
        pub fn request(
            &self,
            method: &str,
            path: &str,
            body: impl Into<reqwest::blocking::Body>,
            headers: &[(&str, &str)],
        ) -> Answer {
            let Ok(method) = reqwest::Method::from_bytes(method.as_bytes()) else {
                return Answer::default();
            };
            let mut req = self
                .client
                .request(method, format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .body(body);
            for (name, value) in headers {
                req = req.header(*name, *value);
            }
            send(req)
        }

        /// The server's Prometheus exposition at `/metrics`, `None` when it did not answer 200.
        pub fn metrics(&self) -> Option<crate::metrics::Metrics> {
            let a = self.get("/metrics");
            (a.status == 200).then(|| crate::metrics::Metrics::parse(&a.body))
        }
    }

    fn send(req: reqwest::blocking::RequestBuilder) -> Answer {
        let Ok(resp) = req.send() else {
            return Answer::default();
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        match resp.text() {
            Ok(body) => Answer {
                status,
                headers,
                body,
            },
            Err(_) => Answer::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot server that answers `reply` to the first request on a free port.
    async fn answer_once(reply: String) -> u16 {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(reply.as_bytes()).await;
        });
        port
    }

    #[tokio::test]
    async fn answers_carry_status_headers_body_and_the_refusal_rule() {
        let body = r#"{"rule":"oversize"}"#;
        let port = answer_once(format!(
            "HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\nX-Qis: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))
        .await;
        let a = Http::local(port).post("/v1/outcomes", "{}", &[]).await;
        assert_eq!(a.status, 413);
        assert_eq!(a.header("x-qis"), "1");
        assert_eq!(a.rule(), "oversize");
    }

    /// A one-shot server (a thread: it serves async and blocking clients alike) that answers
    /// 200 with `{"request": <the head and body it got>}`.
    fn echo_once() -> u16 {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut got = Vec::new();
            let mut buf = vec![0u8; 4096];
            // Until the head and the body its Content-Length declares are in.
            while let Ok(n @ 1..) = s.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
                let Some((head, body)) = text.split_once("\r\n\r\n") else {
                    continue;
                };
                let declared = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() >= declared {
                    break;
                }
            }
            let body = serde_json::json!({"request": String::from_utf8_lossy(&got)}).to_string();
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(reply.as_bytes());
        });
        port
    }

    #[tokio::test]
    async fn a_request_sends_its_method_body_length_and_headers() {
        let port = echo_once();
        let a = Http::local(port)
            .request("GET", "/limits", "x".repeat(600), &[("Qis-Hops", "2")])
            .await;
        assert_eq!(a.status, 200);
        let sent = a.json()["request"]
            .as_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(sent.starts_with("get /limits http/1.1\r\n"), "{sent}");
        assert!(sent.contains("\r\ncontent-length: 600\r\n"), "{sent}");
        assert!(sent.contains("\r\nqis-hops: 2\r\n"), "{sent}");
        assert!(sent.ends_with(&"x".repeat(600)), "{sent}");
        let bad = Http::local(echo_once()).request("B AD", "/", "", &[]).await;
        assert!(!bad.answered(), "an invalid method is no request");
    }

    #[test]
    fn the_blocking_client_sends_the_same_requests_and_reads_json() {
        let port = echo_once();
        let a = blocking::Http::local(port).request("PUT", "/x", "{\"a\":1}", &[]);
        assert_eq!(a.status, 200);
        let sent = a.json()["request"].as_str().unwrap_or_default().to_owned();
        assert!(sent.starts_with("PUT /x HTTP/1.1\r\n"), "{sent}");
        assert!(sent.ends_with("{\"a\":1}"), "{sent}");
        let port = echo_once();
        let v = blocking::Http::local(port).get_json("/y").expect("json");
        let sent = v["request"].as_str().unwrap_or_default();
        assert!(sent.starts_with("GET /y HTTP/1.1\r\n"), "{sent}");
        assert_eq!(
            blocking::Http::local(crate::free_port()).get_json("/"),
            None
        );
    }

    #[test]
    fn a_raw_answer_is_read_like_a_clients() {
        let a = Answer::parse(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\ncontent-type: application/json\r\n\r\n{\"rule\":\"connection_limit\"}",
        );
        assert_eq!(a.status, 503);
        assert_eq!(a.header("retry-after"), "1");
        assert_eq!(a.rule(), "connection_limit");
        assert!(!Answer::parse(b"").answered());
        assert!(!Answer::parse(b"garbage 200 here\r\n\r\n").answered());
    }

    /// A server that counts the connections it accepts and answers every request on each.
    async fn counting_server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    // One read per request: these requests are small and not pipelined.
                    while let Ok(n @ 1..) = s.read(&mut buf).await {
                        let _ = n;
                        let ok = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n";
                        if s.write_all(ok).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (port, accepted)
    }

    #[tokio::test]
    async fn keep_alive_reuses_one_connection_and_the_default_opens_one_per_request() {
        use std::sync::atomic::Ordering;
        let (port, accepted) = counting_server().await;
        let kept = Http::local(port).keep_alive();
        for _ in 0..5 {
            assert_eq!(kept.post("/v1/outcomes", "{}", &[]).await.status, 202);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        let fresh = Http::local(port);
        for _ in 0..3 {
            assert_eq!(fresh.post("/v1/outcomes", "{}", &[]).await.status, 202);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn no_server_is_status_zero_and_a_silent_one_times_out() {
        let port = crate::free_port();
        assert!(!Http::local(port).get("/").await.answered());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind");
        let silent = listener.local_addr().expect("addr").port();
        let t = std::time::Instant::now();
        let a = Http::local(silent)
            .with_timeout(Duration::from_millis(300))
            .get("/")
            .await;
        assert_eq!(a.status, 0);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        drop(listener);
    }
}
