//! The agent's loop, the same in a cluster and on a bare device: intake → deposit (with the
//! outbox) → a worker per subject → synthesis → local view, and in a cluster the reporter.
//! Graceful shutdown on SIGTERM/SIGINT: stop intake, stop the workers (in-flight twins are
//! acked as they enter the synthesis state), flush the outbox for up to 5 s, exit.

use crate::cluster::Subjects;
use crate::config::{Config, Mode};
use crate::deposit;
use crate::intake::{self, IntakeState};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::subject_worker::{self, SubjectSpec, Views, WorkerContext};
use async_nats::jetstream::{Context, stream};
use qis_crds::SynthesisSettings;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

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
    let connected = watch_connection(client);
    if config.manage_jetstream {
        ensure_stream(
            js.clone(),
            qis_contract::stream::standalone(&config.stream, &config.prefix),
        );
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let depositor = deposit::start(
        js.clone(),
        open_outbox(&config)?,
        metrics.clone(),
        stop_rx.clone(),
    );
    let views: Views = Arc::default();
    let routes: Arc<RwLock<Vec<SubjectSpec>>> = Arc::default();
    let accepting = Arc::new(AtomicBool::new(true));
    let intake_state = IntakeState {
        depositor: depositor.clone(),
        metrics: metrics.clone(),
        views: views.clone(),
        subjects: routes.clone(),
        prefix: config.prefix.clone(),
        max_hops: qis_contract::synthesis::DEFAULT_MAX_HOPS,
        time_bounds: default_time_bounds(&config),
        connected: connected.clone(),
        accepting: accepting.clone(),
        limits: config.intake.clone(),
        budget: intake::limits::BodyBudget::new(config.intake.body_budget),
    };
    let server = start_intake(&config, intake_state, metrics.clone(), stop_rx.clone()).await?;
    let (source, fixed) = subject_source(&config, &connected, &views, &metrics, &stop_rx).await?;
    let ctx = WorkerContext {
        config: config.clone(),
        js,
        depositor: depositor.clone(),
        metrics,
        views,
    };
    let mut workers = Workers {
        ctx,
        running: HashMap::new(),
    };
    follow_subjects(source, stop, &routes, &mut workers).await;
    drop(fixed);
    tracing::info!("shutting down: intake closed, flushing the outbox");
    accepting.store(false, Ordering::Relaxed);
    workers.stop_all();
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

/// The intake's time bounds when the agent follows no subject: a standalone agent's synthesis
/// defaults (the documented defaults if they do not resolve: its subjects are refused then), a
/// pod's documented defaults (its swarm's come with its subjects).
fn default_time_bounds(config: &Config) -> intake::clock::TimeBounds {
    match &config.mode {
        Mode::Standalone { defaults, .. } => qis_contract::synthesis::Settings::from_crd(defaults)
            .map(|s| intake::clock::TimeBounds::of(&s))
            .unwrap_or_default(),
        Mode::Cluster { .. } => intake::clock::TimeBounds::default(),
    }
}

/// Whether the NATS connection is up, refreshed every 25 ms (the intake's readiness and the
/// reporter read it).
fn watch_connection(client: async_nats::Client) -> Arc<AtomicBool> {
    let connected = Arc::new(AtomicBool::new(false));
    let flag = connected.clone();
    tokio::spawn(async move {
        loop {
            let up = client.connection_state() == async_nats::connection::State::Connected;
            flag.store(up, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    connected
}

/// Makes the stream in the background when it is missing (standalone), retrying every second.
fn ensure_stream(js: Context, cfg: stream::Config) {
    tokio::spawn(async move {
        while let Err(e) = js.get_or_create_stream(cfg.clone()).await {
            tracing::warn!(error = %e, "cannot ensure the stream yet; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

fn open_outbox(config: &Config) -> Result<Outbox, String> {
    Outbox::open_with(
        &config.data_dir,
        config.outbox.limits(config.outbox_max),
        config.outbox.fsync,
    )
    .map_err(|e| format!("outbox in {}: {e}", config.data_dir.display()))
}

/// Binds the intake's listener and serves it until `stop` turns true.
async fn start_intake(
    config: &Config,
    intake_state: IntakeState,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("listen on {}: {e}", config.listen))?;
    tracing::info!(listen = %listener.local_addr().map_err(|e| e.to_string())?, agent = %config.agent_id, site = %config.site, "agent started");
    Ok(tokio::spawn(intake::server::serve(
        listener,
        intake::router(intake_state),
        config.intake.clone(),
        metrics,
        stop,
    )))
}

/// Where the subjects come from: a fixed list standalone (its sender, returned too, is to be
/// kept alive), the swarm's subjects in a cluster (and there the reporter is started).
async fn subject_source(
    config: &Config,
    connected: &Arc<AtomicBool>,
    views: &Views,
    metrics: &Arc<Metrics>,
    stop: &watch::Receiver<bool>,
) -> Result<(watch::Receiver<Subjects>, Option<watch::Sender<Subjects>>), String> {
    match &config.mode {
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
            // No other agent reports for a standalone one: it exports its consensus itself.
            metrics.consensus.set_exporting(true);
            Ok((rx, Some(tx)))
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
                event_gap: crate::consensus_events::DEFAULT_GAP,
            };
            tokio::spawn(reporter.run(views.clone(), metrics.clone(), stop.clone()));
            let source = crate::cluster::follow(
                kube,
                namespace.clone(),
                swarm.clone(),
                config.prefix.clone(),
            );
            Ok((source, None))
        }
    }
}

/// Applies every change of the subjects (the intake's routes, the workers) until the source
/// ends, a shutdown signal comes or `external_stop` turns true.
async fn follow_subjects(
    mut source: watch::Receiver<Subjects>,
    mut external_stop: Option<watch::Receiver<bool>>,
    routes: &RwLock<Vec<SubjectSpec>>,
    workers: &mut Workers,
) {
    source.mark_changed();
    loop {
        tokio::select! {
            changed = source.changed() => if changed.is_err() { break },
            _ = shutdown_signal() => break,
            _ = async { match external_stop.as_mut() { Some(s) => { let _ = s.wait_for(|v| *v).await; } None => std::future::pending().await } } => break,
        }
        let (specs, defaults) = source.borrow_and_update().clone();
        // The intake's routes carry each subject's settings over the swarm's (its hop limit).
        *routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = specs
            .iter()
            .map(|s| SubjectSpec {
                synthesis: s.synthesis.or(&defaults),
                ..s.clone()
            })
            .collect();
        workers.apply(specs, &defaults);
    }
}

/// The running subject workers, by subject name: the spec and defaults each was started with,
/// and its stop signal.
struct Workers {
    ctx: WorkerContext,
    running: HashMap<String, (SubjectSpec, SynthesisSettings, watch::Sender<bool>)>,
}

impl Workers {
    /// Stops the workers of subjects that went or changed (or whose defaults changed), and
    /// starts one for every subject without one.
    fn apply(&mut self, specs: Vec<SubjectSpec>, defaults: &SynthesisSettings) {
        self.running.retain(|name, (spec, d, tx)| {
            let keep = specs.iter().any(|s| s == spec) && d == defaults;
            if !keep {
                tracing::info!(subject = %name, "subject removed or changed: stopping its worker");
                let _ = tx.send(true);
            }
            keep
        });
        for spec in specs {
            if !self.running.contains_key(&spec.name) {
                let (tx, rx) = watch::channel(false);
                tokio::spawn(subject_worker::run_contained(
                    self.ctx.clone(),
                    spec.clone(),
                    defaults.clone(),
                    rx,
                ));
                self.running
                    .insert(spec.name.clone(), (spec, defaults.clone(), tx));
            }
        }
    }

    fn stop_all(&mut self) {
        for (_, (_, _, tx)) in self.running.drain() {
            let _ = tx.send(true);
        }
    }
}
