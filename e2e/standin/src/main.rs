//! `kube-standin`: a small Kubernetes API server for tests and the local demo, where no
//! kube-apiserver can run. It serves discovery, CRUD, patches (merge, JSON, apply), status
//! subresources, list and watch with resourceVersion resume, Tables for `kubectl get`, CRD
//! registration, finalizers and garbage collection. It does not validate against schemas,
//! run admission, CEL rules or defaulting, or enforce RBAC (the kind e2e covers those).
//!
//! `kube-standin --kubeconfig /tmp/k.yaml [--port 0] [--auto-ready-deployments] [--crds crds/]`
//! prints `listening on http://127.0.0.1:PORT` once it accepts connections.

use clap::Parser;
use qis_kube_standin::{server, store};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Parser, Debug)]
#[command(about = "Kubernetes API stand-in for tests")]
struct Args {
    /// Port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Write a kubeconfig pointing at this server here.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Report Deployments' replicas ready as soon as they are written (a stand-in kubelet).
    #[arg(long)]
    auto_ready_deployments: bool,
    /// Create the CRDs of every YAML file in this folder at start.
    #[arg(long)]
    crds: Option<PathBuf>,
    /// Run the agent Deployments as local processes of this binary (a stand-in kubelet).
    #[arg(long, requires = "kubeconfig")]
    kubelet_agent: Option<PathBuf>,
    /// Where the stand-in kubelet keeps pod logs and data.
    #[arg(long, default_value = "standin-pods")]
    work_dir: PathBuf,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut store = store::Store::new(args.auto_ready_deployments);
    if let Some(dir) = &args.crds {
        qis_kube_standin::load_crds(&mut store, dir)?;
    }
    let shared: server::Shared = Arc::new(Mutex::new(store));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    let addr = listener.local_addr()?;
    if let Some(path) = &args.kubeconfig {
        std::fs::write(path, qis_kube_standin::kubeconfig(addr))?;
    }
    if let (Some(agent), Some(kubeconfig)) = (&args.kubelet_agent, &args.kubeconfig) {
        std::fs::create_dir_all(&args.work_dir)?;
        qis_kube_standin::kubelet::start(
            shared.clone(),
            qis_kube_standin::kubelet::KubeletConfig {
                agent_binary: agent.clone(),
                kubeconfig: kubeconfig.clone(),
                work_dir: args.work_dir.clone(),
            },
        );
    }
    println!("listening on http://{addr}");
    axum::serve(listener, server::router(shared))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
