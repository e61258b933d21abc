//! The operator binary: flags and environment → [`qis_operator::run::run`].

use clap::Parser;
use qis_lease::LeaseLock;
use qis_operator::context::Config;
use qis_operator::nats_connections::{Auth, Settings, Tls};
use qis_operator::run::{Options, run};
use qis_operator::workload::Defaults;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Kubernetes operator for QIS swarms on NATS JetStream"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Default NATS server(s) for swarms that name none.
    #[arg(
        long,
        env = "QIS_NATS_URL",
        default_value = "nats://nats.nats.svc:4222"
    )]
    nats_url: String,
    /// Default credentials: a .creds file.
    #[arg(long, env = "QIS_NATS_CREDS_FILE")]
    nats_creds_file: Option<PathBuf>,
    /// Default credentials: a file holding an nkey seed.
    #[arg(long, env = "QIS_NATS_NKEY_FILE")]
    nats_nkey_file: Option<PathBuf>,
    /// Default credentials: user name (with --nats-password-file).
    #[arg(long, env = "QIS_NATS_USER")]
    nats_user: Option<String>,
    /// Default credentials: a file holding the password.
    #[arg(long, env = "QIS_NATS_PASSWORD_FILE")]
    nats_password_file: Option<PathBuf>,
    /// Default credentials: a file holding a token.
    #[arg(long, env = "QIS_NATS_TOKEN_FILE")]
    nats_token_file: Option<PathBuf>,
    /// Default TLS: CA certificate (PEM).
    #[arg(long, env = "QIS_NATS_CA_FILE")]
    nats_ca_file: Option<PathBuf>,
    /// Default TLS: client certificate and key (PEM).
    #[arg(long, env = "QIS_NATS_CERT_FILE", requires = "nats_key_file")]
    nats_cert_file: Option<PathBuf>,
    #[arg(long, env = "QIS_NATS_KEY_FILE")]
    nats_key_file: Option<PathBuf>,
    /// Default JetStream domain.
    #[arg(long, env = "QIS_JETSTREAM_DOMAIN")]
    jetstream_domain: Option<String>,
    /// Agent image for swarms that name none.
    #[arg(long, env = "QIS_AGENT_IMAGE", default_value = concat!("ghcr.io/qis-operator/qis-agent:", env!("CARGO_PKG_VERSION")))]
    agent_image: String,
    /// How often every object is looked at again (drift revert, live stream state).
    #[arg(long, env = "QIS_RESYNC", default_value = "60s", value_parser = positive_duration)]
    resync: std::time::Duration,
    /// How long deletion retries an unreachable NATS before removing the finalizer.
    #[arg(long, env = "QIS_DELETION_TIMEOUT", default_value = "5m", value_parser = positive_duration)]
    deletion_timeout: std::time::Duration,
    /// Bound on connecting to NATS and on each JetStream request.
    #[arg(long, env = "QIS_NATS_TIMEOUT", default_value = "5s", value_parser = positive_duration)]
    nats_timeout: std::time::Duration,
    /// Reconciles running at once, per kind. Bounds memory and the burst on the API server and
    /// NATS when many objects change together (a restart, a bulk apply).
    #[arg(long, env = "QIS_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Address of /metrics, /healthz, /readyz.
    #[arg(long, env = "QIS_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Hold a Lease before acting (on when the chart runs more than one replica).
    #[arg(long, env = "QIS_LEADER_ELECT")]
    leader_elect: bool,
    #[arg(long, env = "QIS_LEASE_NAME", default_value = "qis-operator")]
    lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "qis-system")]
    lease_namespace: String,
    /// This replica's identity (the pod name).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Watch Nodes for site discovery (needs node read access).
    #[arg(long, env = "QIS_WATCH_NODES", default_value_t = true, action = clap::ArgAction::Set)]
    watch_nodes: bool,
    /// Reconcile only this namespace's swarms and subjects (a namespaced install); unset: every
    /// namespace.
    #[arg(long, env = "QIS_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Where TLS material is written for the NATS client.
    #[arg(long, env = "QIS_SCRATCH_DIR", default_value = "/tmp/qis-operator")]
    scratch_dir: PathBuf,
    /// Log format.
    #[arg(long, env = "QIS_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
}

/// A duration flag: checked, bounded, and not zero (a zero resync would requeue in a hot loop).
fn positive_duration(s: &str) -> Result<Duration, String> {
    match qis_crds::duration::parse(s) {
        Ok(d) if d.is_zero() => Err("must be positive".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{s:?} {e}")),
    }
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Print the NATS permissions a swarm's agents need (for a nats-server config or nsc),
    /// then exit. Without a subcommand the operator runs.
    NatsPermissions {
        /// Namespace of the swarm.
        #[arg(long)]
        namespace: String,
        /// Name of the swarm.
        #[arg(long)]
        swarm: String,
        /// The swarm's `spec.subjectPrefix`, when it sets one.
        #[arg(long)]
        prefix: Option<String>,
        /// `conf` (a nats-server `permissions` block) or `nsc` (an `nsc edit user` line).
        #[arg(long, value_parser = ["conf", "nsc"], default_value = "conf")]
        format: String,
        /// User name for `--format nsc`.
        #[arg(long, default_value = "qis-agents")]
        user: String,
    },
}

/// Prints a swarm's agent permissions.
fn print_permissions(namespace: &str, swarm: &str, prefix: Option<&str>, format: &str, user: &str) {
    let prefix = prefix
        .map(str::to_owned)
        .unwrap_or_else(|| qis_crds::addressing::default_prefix(namespace, swarm));
    let p = qis_operator::nats_permissions::agent(
        &prefix,
        &qis_crds::addressing::stream_name(namespace, swarm),
    );
    print!(
        "{}",
        if format == "nsc" {
            p.nsc_args(user)
        } else {
            p.nats_conf()
        }
    );
}

fn read(path: &Option<PathBuf>) -> Result<Option<String>, String> {
    path.as_ref()
        .map(|p| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display())))
        .transpose()
}

fn default_nats(a: &Args) -> Result<Settings, String> {
    let auth = if let Some(c) = read(&a.nats_creds_file)? {
        Auth::Creds(c)
    } else if let Some(n) = read(&a.nats_nkey_file)? {
        Auth::Nkey(n)
    } else if let Some(u) = &a.nats_user {
        let p = read(&a.nats_password_file)?.ok_or("--nats-user needs --nats-password-file")?;
        Auth::UserPassword(u.clone(), p.trim_end().to_owned())
    } else if let Some(t) = read(&a.nats_token_file)? {
        Auth::Token(t)
    } else {
        Auth::None
    };
    let tls = match (
        read(&a.nats_ca_file)?,
        read(&a.nats_cert_file)?,
        read(&a.nats_key_file)?,
    ) {
        (None, None, _) => None,
        (ca, cert, key) => Some(Tls {
            ca,
            cert_and_key: cert.zip(key),
        }),
    };
    Ok(Settings {
        url: a.nats_url.clone(),
        auth,
        tls,
        jetstream_domain: a.jetstream_domain.clone(),
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    qis_operator::contain::abort_outside_reconciles();
    let args = Args::parse();
    if let Some(Command::NatsPermissions {
        namespace,
        swarm,
        prefix,
        format,
        user,
    }) = &args.command
    {
        print_permissions(namespace, swarm, prefix.as_deref(), format, user);
        return ExitCode::SUCCESS;
    }
    init_logs(&args.log_format);
    let default_nats = match default_nats(&args) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no Kubernetes client");
            return ExitCode::from(1);
        }
    };
    let options = options(&args, default_nats);
    match run(client, options).await {
        Ok(()) => {
            tracing::info!("shut down");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(1)
        }
    }
}

/// Logs to stderr, as JSON lines when `format` is `json`; `RUST_LOG` filters.
fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    if format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
}

/// How the operator runs, from its arguments.
fn options(args: &Args, default_nats: Settings) -> Options {
    let identity = args
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("qis-operator-{}", std::process::id()));
    Options {
        config: Config {
            default_nats,
            defaults: Defaults {
                agent_image: args.agent_image.clone(),
                nats_url: args.nats_url.clone(),
            },
            resync: args.resync,
            deletion_timeout: args.deletion_timeout,
            nats_timeout: args.nats_timeout,
            scratch_dir: args.scratch_dir.clone(),
            site_discovery: args.watch_nodes,
        },
        listen: args.listen,
        election: args.leader_elect.then(|| {
            LeaseLock::new(
                args.lease_namespace.clone(),
                args.lease_name.clone(),
                identity.clone(),
                // client-go's defaults: a 15 s lease renewed every 2 s (each attempt's
                // deadline 2 s); a leader that cannot renew stops after about 11 s.
                Duration::from_secs(15),
                Duration::from_secs(2),
            )
        }),
        watch_nodes: args.watch_nodes,
        concurrency: args.concurrency,
        instance: Some(identity),
        watch_namespace: args.watch_namespace.clone().filter(|ns| !ns.is_empty()),
    }
}
