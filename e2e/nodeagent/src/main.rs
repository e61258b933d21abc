//! `qis-nodeagent`: registers Nodes and runs the pods bound to them as local processes, until
//! SIGINT or SIGTERM.
//!
//! ```sh
//! qis-nodeagent --kubeconfig admin.kubeconfig --work-dir /tmp/na \
//!   --node hall-a:qis.dev/site=hall-a --node hall-b:qis.dev/site=hall-b \
//!   --taint node-role.kubernetes.io/edge:NoSchedule --binary target/debug/qis-agent
//! ```

use clap::Parser;
use qis_nodeagent::{NodeAgent, NodeAgentConfig, NodeSpec};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "A node agent in place of a kubelet: pods run as local processes"
)]
struct Args {
    /// The node agent's credentials.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// A Node: `name` or `name:key=value,key=value` (labels). Repeatable.
    #[arg(long = "node", required = true)]
    nodes: Vec<String>,
    /// A taint of every Node: `key[=value]:Effect`. Repeatable.
    #[arg(long = "taint")]
    taints: Vec<String>,
    /// The executable of every container whose image has no `--image`.
    #[arg(long)]
    binary: PathBuf,
    /// `image=path`: the executable of an image. Repeatable.
    #[arg(long = "image")]
    images: Vec<String>,
    /// Pod directories and logs.
    #[arg(long)]
    work_dir: PathBuf,
    /// `NAME=value` set in every container. Repeatable.
    #[arg(long = "env")]
    env: Vec<String>,
    /// Delete the Nodes on exit.
    #[arg(long)]
    remove_nodes_on_exit: bool,
    /// Also stop when standard input closes (the test or script that started it is gone).
    #[arg(long)]
    exit_on_stdin_eof: bool,
}

/// Resolves when standard input reaches its end (never, unless `enabled`). The read runs on a
/// plain thread: tokio's stdin is a blocking task that would keep the runtime from shutting
/// down after a signal while stdin is still open.
async fn stdin_closed(enabled: bool) {
    if !enabled {
        return futures::future::pending().await;
    }
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = tx.send(());
    });
    let _ = rx.await;
}

fn pair<'a>(s: &'a str, sep: char, what: &str) -> Result<(&'a str, &'a str), String> {
    s.split_once(sep)
        .ok_or_else(|| format!("{what} {s:?}: expected a {sep:?}"))
}

fn config(args: &Args) -> Result<NodeAgentConfig, String> {
    let mut nodes = Vec::new();
    for n in &args.nodes {
        let (name, labels) = n.split_once(':').unwrap_or((n, ""));
        let labels: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
        for l in &labels {
            pair(l, '=', "label")?;
        }
        let mut node = NodeSpec::new(name, &labels);
        for t in &args.taints {
            let (kv, effect) = t
                .rsplit_once(':')
                .ok_or_else(|| format!("taint {t:?}: expected key[=value]:Effect"))?;
            let (key, value) = match kv.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (kv, None),
            };
            node = node.taint(key, value, effect);
        }
        nodes.push(node);
    }
    let images = args
        .images
        .iter()
        .map(|i| pair(i, '=', "image").map(|(k, v)| (k.to_owned(), PathBuf::from(v))))
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    let extra_env = args
        .env
        .iter()
        .map(|e| pair(e, '=', "env").map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NodeAgentConfig {
        kubeconfig: args.kubeconfig.clone(),
        nodes,
        default_binary: args.binary.clone(),
        images,
        work_dir: args.work_dir.clone(),
        extra_env,
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qis-nodeagent: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let agent = match NodeAgent::start(config).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("qis-nodeagent: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("{}", serde_json::json!({"nodes": agent.nodes()}));
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("qis-nodeagent: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = stdin_closed(args.exit_on_stdin_eof) => {}
    }
    if args.remove_nodes_on_exit {
        if let Err(e) = agent.stop_and_remove_nodes().await {
            eprintln!("qis-nodeagent: {e}");
            return std::process::ExitCode::FAILURE;
        }
    } else {
        agent.stop().await;
    }
    std::process::ExitCode::SUCCESS
}
