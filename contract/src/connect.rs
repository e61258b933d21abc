//! How the operator and the agent connect to NATS: the credential kinds a swarm may use, how
//! each is handed to the client, how a URL list is read, and the JetStream context both use.
//! Each side adds what is its own (the operator a connect deadline, the agent reconnecting for
//! ever and its inbox prefix).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How to authenticate (contents, never paths: a rotated Secret yields different settings).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub enum Auth {
    #[default]
    None,
    /// Contents of a `.creds` file.
    Creds(String),
    /// An nkey seed.
    Nkey(String),
    UserPassword(String, String),
    Token(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.write_str(match self {
            Auth::None => "None",
            Auth::Creds(_) => "Creds(…)",
            Auth::Nkey(_) => "Nkey(…)",
            Auth::UserPassword(..) => "UserPassword(…)",
            Auth::Token(_) => "Token(…)",
        })
    }
}

/// Why connect options could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The `.creds` contents do not parse.
    #[error("not a valid .creds file: {0}")]
    Creds(#[source] std::io::Error),
    /// One of the comma-separated URLs does not parse (`url` is the list, redacted).
    #[error("nats url {url:?}: {source}")]
    Url {
        url: String,
        #[source]
        source: std::io::Error,
    },
    /// A credential file could not be read.
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Time a JetStream request (and a first connect attempt) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Options naming the connection `name`, each connect attempt and request bounded by `timeout`.
pub fn options(name: &str, timeout: Duration) -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(timeout)
        .request_timeout(Some(timeout))
}

/// `opts` authenticating with `auth`.
pub fn with_auth(
    opts: async_nats::ConnectOptions,
    auth: &Auth,
) -> Result<async_nats::ConnectOptions, ConnectError> {
    Ok(match auth {
        Auth::None => opts,
        Auth::Creds(c) => opts.credentials(c).map_err(ConnectError::Creds)?,
        Auth::Nkey(seed) => opts.nkey(seed.trim().to_owned()),
        Auth::UserPassword(u, p) => opts.user_and_password(u.clone(), p.clone()),
        Auth::Token(t) => opts.token(t.trim().to_owned()),
    })
}

/// `opts` requiring TLS, trusting `ca` and presenting `cert_and_key` when given (PEM files).
pub fn with_tls(
    mut opts: async_nats::ConnectOptions,
    ca: Option<PathBuf>,
    cert_and_key: Option<(PathBuf, PathBuf)>,
) -> async_nats::ConnectOptions {
    opts = opts.require_tls(true);
    if let Some(ca) = ca {
        opts = opts.add_root_certificates(ca);
    }
    if let Some((cert, key)) = cert_and_key {
        opts = opts.add_client_certificate(cert, key);
    }
    opts
}

/// The servers of a comma-separated URL list.
pub fn server_addrs(urls: &str) -> Result<Vec<async_nats::ServerAddr>, ConnectError> {
    urls.split(',')
        .map(|u| {
            u.trim().parse().map_err(|source| ConnectError::Url {
                url: redact_urls(urls),
                source,
            })
        })
        .collect()
}

/// What replaces the user-info of a URL in anything shown: conditions, Events, logs, errors.
pub const REDACTED: &str = "***";

/// `urls` (one URL or a comma-separated list) with the user-info of every URL replaced by
/// [`REDACTED`], so `nats://user:secret@host:4222` shows as `nats://***@host:4222`.
///
/// Works on text that does not parse as well: everything between a `://` (or the start) and
/// the last `@` before the next `://` is user-info. A password holding `,`, `/` or `@` is
/// therefore hidden whole; NATS URLs have no path, so no host is mistaken for user-info.
pub fn redact_urls(urls: &str) -> String {
    let mut out = String::with_capacity(urls.len());
    let mut rest = urls;
    loop {
        // `region` runs to the next `://` (exclusive) or the end of the text.
        let (region, next) = match rest.find("://") {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        match region.rfind('@') {
            Some(at) => {
                out.push_str(REDACTED);
                out.push_str(&region[at..]);
            }
            None => out.push_str(region),
        }
        let Some(next) = next else { return out };
        out.push_str("://");
        rest = &next[3..];
    }
}

/// The credentials in the files of `dir` (named as in [`crate::paths::credentials`]); the
/// first kind present wins: `creds`, `nkey`, `username` with `password`, `token`.
pub fn read_auth(dir: &Path) -> Result<Auth, ConnectError> {
    use crate::paths::credentials as file;
    let read = |name: &str| {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ConnectError::Read { path, source }),
        }
    };
    if let Some(c) = read(file::CREDS)? {
        return Ok(Auth::Creds(c));
    }
    if let Some(n) = read(file::NKEY)? {
        return Ok(Auth::Nkey(n));
    }
    if let (Some(u), Some(p)) = (read(file::USERNAME)?, read(file::PASSWORD)?) {
        return Ok(Auth::UserPassword(
            u.trim().to_owned(),
            p.trim_end().to_owned(),
        ));
    }
    Ok(read(file::TOKEN)?.map(Auth::Token).unwrap_or_default())
}

/// A JetStream context on `client`, in `domain` when set, requests bounded by `timeout`.
pub fn jetstream(
    client: async_nats::Client,
    domain: Option<&str>,
    timeout: Duration,
) -> async_nats::jetstream::Context {
    let mut js = match domain {
        Some(d) => async_nats::jetstream::with_domain(client, d),
        None => async_nats::jetstream::new(client),
    };
    js.set_timeout(timeout);
    js
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_read_by_the_names_the_operator_mounts() {
        let dir = std::env::temp_dir().join(format!("qis-contract-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        assert_eq!(read_auth(&dir).expect("empty dir"), Auth::None);
        std::fs::write(dir.join("token"), "s3cret\n").expect("write");
        assert_eq!(
            read_auth(&dir).expect("token"),
            Auth::Token("s3cret\n".into())
        );
        std::fs::write(dir.join("username"), "agent\n").expect("write");
        std::fs::write(dir.join("password"), " pass word \n").expect("write");
        assert_eq!(
            read_auth(&dir).expect("user"),
            Auth::UserPassword("agent".into(), " pass word".into()),
            "user and password win over a token; a password keeps its leading spaces"
        );
        std::fs::write(dir.join("nkey"), "SUA...").expect("write");
        assert_eq!(read_auth(&dir).expect("nkey"), Auth::Nkey("SUA...".into()));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn every_url_of_a_list_is_checked() {
        assert_eq!(
            server_addrs("nats://a:4222, nats://b:4222")
                .expect("two urls")
                .len(),
            2
        );
        let e = server_addrs("nats://a:4222,nats://b:notaport").expect_err("bad port");
        assert!(e.to_string().contains("nats://b:notaport"), "{e}");
    }

    #[test]
    fn user_info_is_redacted_from_urls() {
        let cases = [
            ("nats://user:secret@host:4222", "nats://***@host:4222"),
            ("nats://token@host:4222", "nats://***@host:4222"),
            ("nats://host:4222", "nats://host:4222"),
            (
                "nats://a:pw1@h1:4222, tls://b:pw2@h2:4222,nats://h3",
                "nats://***@h1:4222, tls://***@h2:4222,nats://h3",
            ),
            ("nats://u:p@[::1]:4222", "nats://***@[::1]:4222"),
            (
                "nats://u:p@[fe80::1%25eth0]:4222",
                "nats://***@[fe80::1%25eth0]:4222",
            ),
            // Passwords with characters that break parsing are hidden whole.
            ("nats://u:p@ss@host:4222", "nats://***@host:4222"),
            ("nats://u:pa,ss@host:4222", "nats://***@host:4222"),
            ("nats://u:pa/ss@host:4222", "nats://***@host:4222"),
            // Not URLs at all.
            ("user:secret@host:4222", "***@host:4222"),
            ("u:p@h1,u2:p2@h2", "***@h2"),
            ("nats://u:secret@", "nats://***@"),
            ("", ""),
        ];
        for (url, want) in cases {
            assert_eq!(redact_urls(url), want, "{url}");
        }
    }

    #[test]
    fn a_url_that_does_not_parse_is_reported_redacted() {
        let e = server_addrs("nats://u:hunter2@a:4222,nats://v:hunter3@b:notaport")
            .expect_err("bad port");
        let shown = e.to_string();
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(shown.contains("nats://***@b:notaport"), "{shown}");
    }

    #[test]
    fn secrets_are_not_printed() {
        let shown = format!("{:?}", Auth::UserPassword("u".into(), "hunter2".into()));
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
