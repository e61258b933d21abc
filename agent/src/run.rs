//! The agent's loop, the same in a cluster and on a bare device: intake → deposit (with the
//! outbox) → twins per subject → synthesis → local view, and in a cluster the reporter.
//! Graceful shutdown on SIGTERM/SIGINT: stop intake, stop the workers (in-flight twins are
//! acked as they enter the synthesis state), flush the outbox for up to 5 s, exit.

use crate::config::{Config, Mode};
use crate::deposit;
use crate::intake::{self, Api};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::twins::{self, Shared, SubjectSpec};
use async_nats::jetstream::stream;
use qis_crds::SynthesisSettings;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// The stream a standalone agent makes when it is missing (the operator's defaults).
pub fn standalone_stream(config: &Config) -> stream::Config {
    stream::Config {
        name: config.stream.clone(),
        subjects: vec![format!("{}.>", config.prefix)],
        max_age: Duration::from_secs(24 * 3600),
        max_bytes: 50 * 1024 * 1024,
        max_message_size: i32::try_from(qis_crds::constants::DEFAULT_MAX_MSG_SIZE)
            .unwrap_or(i32::MAX),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
}

/// Runs the agent until a shutdown signal or `stop` turns true.
pub async fn run(config: Config, stop: Option<watch::Receiver<bool>>) -> Result<(), String> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::default());
    let client = crate::nats::connect(&config.nats, &config.agent_id, &config.stream).await?;
    let js = crate::nats::jetstream(client.clone(), &config.nats);
    let connected = Arc::new(AtomicBool::new(false));
    {
        let (client, connected) = (client.clone(), connected.clone());
        tokio::spawn(async move {
            loop {
                let up = client.connection_state() == async_nats::connection::State::Connected;
                connected.store(up, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
    }
    if config.manage_jetstream {
        let (js, cfg) = (js.clone(), standalone_stream(&config));
        tokio::spawn(async move {
            while let Err(e) = js.get_or_create_stream(cfg.clone()).await {
                tracing::warn!(error = %e, "cannot ensure the stream yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let outbox = Outbox::open_with(
        &config.data_dir,
        config.outbox.limits(config.outbox_max),
        config.outbox.fsync,
    )
    .map_err(|e| format!("outbox in {}: {e}", config.data_dir.display()))?;
    let depositor = deposit::start(js.clone(), outbox, metrics.clone(), stop_rx.clone());
    let views: twins::Views = Arc::default();
    let routes: Arc<RwLock<Vec<SubjectSpec>>> = Arc::default();
    let accepting = Arc::new(AtomicBool::new(true));
    let api = Api {
        depositor: depositor.clone(),
        metrics: metrics.clone(),
        views: views.clone(),
        subjects: routes.clone(),
        prefix: config.prefix.clone(),
        max_hops: 1,
        connected: connected.clone(),
        accepting: accepting.clone(),
        limits: config.intake.clone(),
        budget: intake::limits::BodyBudget::new(config.intake.body_budget),
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("listen on {}: {e}", config.listen))?;
    tracing::info!(listen = %listener.local_addr().map_err(|e| e.to_string())?, agent = %config.agent_id, site = %config.site, "agent started");
    let server = tokio::spawn(intake::server::serve(
        listener,
        intake::router(api),
        config.intake.clone(),
        metrics.clone(),
        stop_rx.clone(),
    ));

    // Where the subjects come from (a fixed list standalone: its sender is kept alive here).
    let mut fixed: Option<watch::Sender<(Vec<SubjectSpec>, SynthesisSettings)>> = None;
    let mut source: watch::Receiver<(Vec<SubjectSpec>, SynthesisSettings)> = match &config.mode {
        Mode::Standalone { subjects, defaults } => {
            let specs = subjects
                .iter()
                .map(|s| SubjectSpec {
                    name: s.name.clone(),
                    domain: s.domain.clone(),
                    problem_class: s.problem_class.clone(),
                    address: s.address(&config.prefix),
                    synthesis: s.synthesis.clone(),
                })
                .collect();
            let (tx, rx) = watch::channel((specs, defaults.clone()));
            fixed = Some(tx);
            rx
        }
        Mode::Cluster { namespace, swarm } => {
            let kube = kube::Client::try_default()
                .await
                .map_err(|e| format!("Kubernetes client: {e}"))?;
            let reporter = crate::report::Reporter {
                client: kube.clone(),
                namespace: namespace.clone(),
                swarm: swarm.clone(),
                identity: config.agent_id.clone(),
                site: config.site.clone(),
                interval: config.report_interval,
                connected: connected.clone(),
            };
            tokio::spawn(reporter.run(views.clone(), metrics.clone(), stop_rx.clone()));
            crate::cluster::follow(
                kube,
                namespace.clone(),
                swarm.clone(),
                config.prefix.clone(),
            )
        }
    };
    let shared = Shared {
        config: config.clone(),
        js,
        depositor: depositor.clone(),
        metrics,
        views,
    };
    let mut workers: HashMap<String, (SubjectSpec, SynthesisSettings, watch::Sender<bool>)> =
        HashMap::new();
    let mut external_stop = stop;
    source.mark_changed();
    loop {
        tokio::select! {
            changed = source.changed() => if changed.is_err() { break },
            _ = shutdown_signal() => break,
            _ = async { match external_stop.as_mut() { Some(s) => { let _ = s.wait_for(|v| *v).await; } None => std::future::pending().await } } => break,
        }
        let (specs, defaults) = source.borrow_and_update().clone();
        *routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = specs.clone();
        workers.retain(|name, (spec, d, tx)| {
            let keep = specs.iter().any(|s| s == spec) && *d == defaults;
            if !keep {
                tracing::info!(subject = %name, "subject removed or changed: stopping its worker");
                let _ = tx.send(true);
            }
            keep
        });
        for spec in specs {
            if !workers.contains_key(&spec.name) {
                let (tx, rx) = watch::channel(false);
                tokio::spawn(twins::run_contained(
                    shared.clone(),
                    spec.clone(),
                    defaults.clone(),
                    rx,
                ));
                workers.insert(spec.name.clone(), (spec, defaults.clone(), tx));
            }
        }
    }
    drop(fixed);
    tracing::info!("shutting down: intake closed, flushing the outbox");
    accepting.store(false, Ordering::Relaxed);
    for (_, (_, _, tx)) in workers.drain() {
        let _ = tx.send(true);
    }
    let left = depositor.flush(Duration::from_secs(5)).await;
    let _ = stop_tx.send(true);
    let _ = server.await;
    match left {
        Some(0) => tracing::info!("outbox empty"),
        Some(n) => tracing::warn!(packets = n, "outbox kept on disk for the next start"),
        None => tracing::warn!("outbox flush timed out; what is left stays on disk"),
    }
    Ok(())
}
