//! One pod: its containers as local processes, supervised (restarts with a capped backoff,
//! probes), its status written through `pods/status`, and its termination.

use crate::env::{self, Mounts, POD_IP, Sources};
use crate::nodes::now;
use crate::volumes::{self, Volumes};
use crate::{Ctx, Error, PORT_ANNOTATION, PodRecord, lock, probes, signal};
use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Child;
use tokio::sync::watch;

/// What the node agent wants of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Run,
    /// The Pod is being deleted: SIGTERM, SIGKILL after the grace period, delete it.
    Graceful(Duration),
    /// The Pod is gone or the node agent stops: SIGKILL.
    Kill,
}

/// The longest grace period honoured.
const MAX_GRACE: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The grace period of a Pod being deleted.
pub(crate) fn grace(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| pod.spec.as_ref()?.termination_grace_period_seconds)
        .unwrap_or(30);
    Duration::from_secs(u64::try_from(secs).unwrap_or(0)).min(MAX_GRACE)
}

/// How a container is run.
#[derive(Debug)]
struct Plan {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    port: u16,
    log: PathBuf,
}

/// A container and its process.
#[derive(Debug)]
struct Proc {
    spec: Container,
    plan: Plan,
    child: Option<Child>,
    pid: Option<u32>,
    starts: u32,
    started_at: Option<(Instant, String)>,
    last_terminated: Option<Value>,
    next_start: Instant,
    backoff: Duration,
    finished: bool,
    started: bool,
    ready: bool,
    ready_streak: (u32, u32),
    startup_failures: u32,
    live_failures: u32,
    next_startup: Instant,
    next_live: Instant,
    spawn_error: Option<String>,
}

fn period(p: &Probe) -> Duration {
    secs(p.period_seconds, 10)
}

fn secs(v: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(v.and_then(|s| u64::try_from(s).ok()).unwrap_or(default))
}

fn threshold(v: Option<i32>, default: u32) -> u32 {
    v.and_then(|s| u32::try_from(s).ok())
        .unwrap_or(default)
        .max(1)
}

impl Proc {
    fn start(&mut self, root: &Path, registry: &crate::Registry, key: &(String, String)) {
        let spawned = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.plan.log)
            .and_then(|log| {
                tokio::process::Command::new(&self.plan.program)
                    .args(&self.plan.args)
                    .env_clear()
                    .envs(self.plan.env.iter().cloned())
                    .current_dir(root)
                    .process_group(0)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .kill_on_drop(true)
                    .spawn()
            });
        self.starts += 1;
        match spawned {
            Ok(child) => {
                self.pid = child.id();
                self.child = Some(child);
                self.started_at = Some((Instant::now(), now()));
                self.spawn_error = None;
                self.started = self.spec.startup_probe.is_none();
                self.ready = false;
                self.ready_streak = (0, 0);
                self.startup_failures = 0;
                self.live_failures = 0;
                let delay = |p: &Option<Probe>| {
                    p.as_ref()
                        .map(|p| secs(p.initial_delay_seconds, 0))
                        .unwrap_or_default()
                };
                self.next_startup = Instant::now() + delay(&self.spec.startup_probe);
                self.next_live = Instant::now() + delay(&self.spec.liveness_probe);
                if let (Some(pid), Some(r)) = (self.pid, lock(registry).get_mut(key)) {
                    r.pids.insert(self.spec.name.clone(), pid);
                }
                tracing::info!(pod = ?key, container = self.spec.name, pid = ?self.pid, "started");
            }
            Err(e) => {
                tracing::warn!(pod = ?key, container = self.spec.name, program = %self.plan.program.display(), error = %e, "cannot start");
                self.spawn_error = Some(format!("{}: {e}", self.plan.program.display()));
                self.schedule_restart(Duration::ZERO);
            }
        }
    }

    fn schedule_restart(&mut self, ran: Duration) {
        if ran >= Duration::from_secs(60) {
            self.backoff = Duration::from_secs(1);
        }
        self.next_start = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Records the exit of the process; decides on a restart by `policy`.
    fn exited(
        &mut self,
        status: std::process::ExitStatus,
        policy: &str,
        registry: &crate::Registry,
        key: &(String, String),
    ) {
        let code = status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(-1);
        let (ran, started_at) = self
            .started_at
            .take()
            .map(|(i, s)| (i.elapsed(), s))
            .unwrap_or_default();
        self.last_terminated = Some(json!({
            "exitCode": code,
            "reason": if code == 0 { "Completed" } else { "Error" },
            "startedAt": started_at,
            "finishedAt": now(),
            "containerID": self.pid.map(|p| format!("nodeagent://{p}")),
        }));
        tracing::info!(pod = ?key, container = self.spec.name, code, "exited");
        if let Some(r) = lock(registry).get_mut(key) {
            r.pids.remove(&self.spec.name);
        }
        if let Some(pid) = self.pid {
            // What it left behind in its process group goes with it.
            signal(pid, "KILL");
        }
        self.child = None;
        self.pid = None;
        self.ready = false;
        self.started = false;
        let restart = match policy {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => true,
        };
        if restart {
            self.schedule_restart(ran);
        } else {
            self.finished = true;
        }
    }

    /// One supervision step: reap, (re)start, probe.
    async fn step(
        &mut self,
        root: &Path,
        policy: &str,
        registry: &crate::Registry,
        key: &(String, String),
    ) {
        if let Some(child) = self.child.as_mut() {
            match child.try_wait() {
                Ok(Some(status)) => self.exited(status, policy, registry, key),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot wait for a child"),
            }
        }
        if self.child.is_none() {
            if !self.finished && Instant::now() >= self.next_start {
                self.start(root, registry, key);
            }
            return;
        }
        let port = self.plan.port;
        let now = Instant::now();
        if !self.started {
            if let Some(p) = self.spec.startup_probe.clone()
                && now >= self.next_startup
            {
                self.next_startup = now + period(&p);
                if probes::run(&p, port, &self.plan.env, root).await {
                    self.started = true;
                } else {
                    self.startup_failures += 1;
                    if self.startup_failures >= threshold(p.failure_threshold, 3) {
                        self.kill("startup probe failed");
                    }
                }
            }
            return;
        }
        match self.spec.readiness_probe.clone() {
            None => self.ready = true,
            Some(p) => {
                let delay = secs(p.initial_delay_seconds, 0);
                let since = self.started_at.as_ref().map(|(i, _)| i.elapsed());
                if since.is_some_and(|s| s >= delay) {
                    let (ok, fail) = &mut self.ready_streak;
                    if probes::run(&p, port, &self.plan.env, root).await {
                        *ok += 1;
                        *fail = 0;
                        if *ok >= threshold(p.success_threshold, 1) {
                            self.ready = true;
                        }
                    } else {
                        *fail += 1;
                        *ok = 0;
                        if *fail >= threshold(p.failure_threshold, 3) {
                            self.ready = false;
                        }
                    }
                }
            }
        }
        if let Some(p) = self.spec.liveness_probe.clone()
            && now >= self.next_live
        {
            self.next_live = now + period(&p);
            if probes::run(&p, port, &self.plan.env, root).await {
                self.live_failures = 0;
            } else {
                self.live_failures += 1;
                if self.live_failures >= threshold(p.failure_threshold, 3) {
                    self.kill("liveness probe failed");
                }
            }
        }
    }

    /// SIGKILLs the process (its group); the next step reaps it and restarts it by policy.
    fn kill(&mut self, why: &str) {
        tracing::info!(container = self.spec.name, why, "killing");
        if let Some(pid) = self.pid {
            signal(pid, "KILL");
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }

    /// The container's status.
    fn status(&self) -> Value {
        let state = if self.child.is_some() {
            let at = self.started_at.as_ref().map(|(_, s)| s.clone());
            json!({"running": {"startedAt": at}})
        } else if self.finished {
            json!({"terminated": self.last_terminated})
        } else if let Some(e) = &self.spawn_error {
            json!({"waiting": {"reason": "RunContainerError", "message": e}})
        } else if self.starts == 0 {
            json!({"waiting": {"reason": "ContainerCreating"}})
        } else {
            json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting the process"}})
        };
        let last = match (&self.last_terminated, self.finished) {
            (Some(t), false) => json!({"terminated": t}),
            _ => json!({}),
        };
        json!({
            "name": self.spec.name,
            "image": self.spec.image.clone().unwrap_or_default(),
            "imageID": format!("nodeagent://{}", self.plan.program.display()),
            "containerID": self.pid.map(|p| format!("nodeagent://{p}")),
            "ready": self.ready && self.child.is_some(),
            "started": self.started && self.child.is_some(),
            "restartCount": self.starts.saturating_sub(1),
            "state": state,
            "lastState": last,
        })
    }
}

/// Removes the pod's record when its task ends, however it ends.
struct Registered {
    registry: crate::Registry,
    key: (String, String),
    uid: String,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut r = lock(&self.registry);
        if r.get(&self.key).is_some_and(|p| p.uid == self.uid) {
            r.remove(&self.key);
        }
    }
}

/// Everything set up for the processes.
#[derive(Debug)]
struct Prepared {
    procs: Vec<Proc>,
    volumes: Volumes,
}

async fn prepare(ctx: &Ctx, pod: &Pod, root: &Path, logs: &Path) -> Result<Prepared, Error> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    std::fs::create_dir_all(logs).map_err(Error::io(logs))?;
    let mut sources = Sources::new(&ctx.client, &ns);
    let volumes = volumes::materialize(&ctx.client, pod, root, &mut sources).await?;
    let kubeconfig = volumes::kubeconfig(root, pod, &ctx.server, &volumes, &mut sources).await?;
    let mut procs = Vec::new();
    for c in containers {
        let port = qis_testkit::free_port();
        let mounts = Mounts::of(&c, &volumes.dirs);
        let mut env: Vec<(String, String)> = env::resolve(pod, &c, &mut sources)
            .await?
            .into_iter()
            .map(|(k, v)| {
                let v = mounts.rewrite(&v);
                (k, v)
            })
            .collect();
        env.extend(ctx.config.extra_env.iter().cloned());
        env.push(("QIS_LISTEN".to_owned(), format!("{POD_IP}:{port}")));
        env.push(("KUBECONFIG".to_owned(), kubeconfig.display().to_string()));
        if !env.iter().any(|(k, _)| k == "PATH")
            && let Ok(path) = std::env::var("PATH")
        {
            env.push(("PATH".to_owned(), path));
        }
        // Later entries win, as in the kubelet; keep the last of each name.
        let mut last: BTreeMap<String, usize> = BTreeMap::new();
        for (i, (k, _)) in env.iter().enumerate() {
            last.insert(k.clone(), i);
        }
        let env: Vec<(String, String)> = env
            .into_iter()
            .enumerate()
            .filter(|(i, (k, _))| last.get(k) == Some(i))
            .map(|(_, kv)| kv)
            .collect();
        let vars = env.iter().cloned().collect();
        let args: Vec<String> = c
            .command
            .iter()
            .flatten()
            .chain(c.args.iter().flatten())
            .map(|a| mounts.rewrite(&env::expand(a, &vars)))
            .collect();
        let program = c
            .image
            .as_ref()
            .and_then(|i| ctx.config.images.get(i))
            .unwrap_or(&ctx.config.default_binary)
            .clone();
        procs.push(Proc {
            plan: Plan {
                program,
                args,
                env,
                port,
                log: logs.join(format!("{}.log", c.name)),
            },
            spec: c,
            child: None,
            pid: None,
            starts: 0,
            started_at: None,
            last_terminated: None,
            next_start: Instant::now(),
            backoff: Duration::from_secs(1),
            finished: false,
            started: false,
            ready: false,
            ready_streak: (0, 0),
            startup_failures: 0,
            live_failures: 0,
            next_startup: Instant::now(),
            next_live: Instant::now(),
            spawn_error: None,
        });
    }
    let mut annotations = BTreeMap::new();
    for (i, p) in procs.iter().enumerate() {
        let port = p.plan.port.to_string();
        if i == 0 {
            annotations.insert(PORT_ANNOTATION.to_owned(), port.clone());
        }
        annotations.insert(format!("{PORT_ANNOTATION}-{}", p.spec.name), port);
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch_metadata(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
    )
    .await?;
    Ok(Prepared { procs, volumes })
}

/// Condition `type_` with its transition time kept while its status stays.
fn condition(
    transitions: &mut BTreeMap<&'static str, (bool, String)>,
    type_: &'static str,
    status: bool,
) -> Value {
    let entry = transitions.entry(type_).or_insert_with(|| (status, now()));
    if entry.0 != status {
        *entry = (status, now());
    }
    json!({"type": type_, "status": if status { "True" } else { "False" },
           "lastTransitionTime": entry.1, "lastProbeTime": null})
}

/// The status of the pod: what `pods/status` gets.
fn pod_status(
    pod: &Pod,
    procs: &[Proc],
    start_time: &str,
    transitions: &mut BTreeMap<&'static str, (bool, String)>,
    waiting: Option<&str>,
) -> Value {
    let all_ready = !procs.is_empty() && procs.iter().all(|p| p.ready && p.child.is_some());
    let phase = if procs.iter().all(|p| p.finished) && !procs.is_empty() {
        let ok = procs.iter().all(|p| {
            p.last_terminated
                .as_ref()
                .and_then(|t| t["exitCode"].as_i64())
                == Some(0)
        });
        if ok { "Succeeded" } else { "Failed" }
    } else if procs.iter().any(|p| p.starts > 0) {
        "Running"
    } else {
        "Pending"
    };
    let scheduled = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
        .and_then(|c| serde_json::to_value(c).ok())
        .unwrap_or_else(|| json!({"type": "PodScheduled", "status": "True"}));
    let statuses: Vec<Value> = match waiting {
        Some(message) => pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .map(|c| {
                json!({"name": c.name, "image": c.image, "imageID": "", "ready": false,
                       "started": false, "restartCount": 0,
                       "state": {"waiting": {"reason": "CreateContainerConfigError", "message": message}}})
            })
            .collect(),
        None => procs.iter().map(Proc::status).collect(),
    };
    json!({"status": {
        "phase": phase,
        "hostIP": POD_IP, "hostIPs": [{"ip": POD_IP}],
        "podIP": POD_IP, "podIPs": [{"ip": POD_IP}],
        "startTime": start_time,
        "conditions": [
            condition(transitions, "PodReadyToStartContainers", waiting.is_none()),
            condition(transitions, "Initialized", true),
            condition(transitions, "Ready", all_ready),
            condition(transitions, "ContainersReady", all_ready),
            scheduled,
        ],
        "containerStatuses": statuses,
    }})
}

/// Runs the pod until told to stop (see [`Stop`]).
pub(crate) async fn run(ctx: Arc<Ctx>, pod: Pod, mut stop: watch::Receiver<Stop>) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let key = (ns.clone(), name.clone());
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let root = ctx.config.work_dir.join("pods").join(&uid);
    let logs = ctx
        .config
        .work_dir
        .join("pods")
        .join(format!("{ns}_{name}"));
    lock(&ctx.registry).insert(
        key.clone(),
        PodRecord {
            uid: uid.clone(),
            ..Default::default()
        },
    );
    let _registered = Registered {
        registry: ctx.registry.clone(),
        key: key.clone(),
        uid: uid.clone(),
    };
    let start_time = now();
    let mut transitions = BTreeMap::new();
    let mut written = Value::Null;
    let policy = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".to_owned());

    let write_status = async |status: Value, written: &mut Value| {
        if status != *written {
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
            {
                Ok(_) => *written = status,
                Err(e) => tracing::warn!(pod = ?key, error = %e, "cannot write pod status"),
            }
        }
    };

    // Set up: volumes, environment, ports; retried until it works or the pod goes.
    let mut prepared = None;
    while *stop.borrow() == Stop::Run {
        match prepare(&ctx, &pod, &root, &logs).await {
            Ok(p) => {
                if let Some(r) = lock(&ctx.registry).get_mut(&key) {
                    r.port = p.procs.first().map(|p| p.plan.port).unwrap_or_default();
                }
                prepared = Some(p);
                break;
            }
            Err(e) => {
                tracing::warn!(pod = ?key, error = %e, "cannot set up the pod");
                let status = pod_status(
                    &pod,
                    &[],
                    &start_time,
                    &mut transitions,
                    Some(&e.to_string()),
                );
                write_status(status, &mut written).await;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    r = stop.changed() => if r.is_err() { break },
                }
            }
        }
    }
    let mut procs = Vec::new();
    let mut volumes = Volumes::default();
    if let Some(p) = prepared {
        procs = p.procs;
        volumes = p.volumes;
    }

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcome = loop {
        let wanted = *stop.borrow();
        if wanted != Stop::Run {
            break wanted;
        }
        for t in volumes.tokens.iter_mut() {
            if Instant::now() >= t.refresh_at
                && let Err(e) = volumes::write_token(&ctx.client, &pod, t).await
            {
                tracing::warn!(pod = ?key, error = %e, "cannot refresh the token");
            }
        }
        for p in procs.iter_mut() {
            p.step(&root, &policy, &ctx.registry, &key).await;
        }
        let status = pod_status(&pod, &procs, &start_time, &mut transitions, None);
        write_status(status, &mut written).await;
        tokio::select! {
            _ = tick.tick() => {}
            r = stop.changed() => if r.is_err() { break Stop::Kill },
        }
    };
    terminate(&mut procs, outcome, &mut stop).await;
    if let Some(r) = lock(&ctx.registry).get_mut(&key) {
        r.pids.clear();
    }
    if matches!(outcome, Stop::Graceful(_)) {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => tracing::info!(pod = ?key, "deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => tracing::warn!(pod = ?key, error = %e, "cannot delete the pod"),
        }
    }
    let _ = std::fs::remove_dir_all(root.join("volumes"));
}

/// SIGTERM, then SIGKILL after the grace period (at once for [`Stop::Kill`], or when a kill is
/// asked for meanwhile).
async fn terminate(procs: &mut [Proc], how: Stop, stop: &mut watch::Receiver<Stop>) {
    if let Stop::Graceful(grace) = how {
        for p in procs.iter() {
            if let Some(pid) = p.pid {
                signal(pid, "TERM");
            }
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && *stop.borrow() != Stop::Kill {
            let mut alive = false;
            for p in procs.iter_mut() {
                if let Some(c) = p.child.as_mut() {
                    match c.try_wait() {
                        Ok(None) => alive = true,
                        _ => p.child = None,
                    }
                }
            }
            if !alive {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for p in procs.iter_mut() {
        if let Some(pid) = p.pid {
            signal(pid, "KILL");
        }
        if let Some(mut c) = p.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
        p.pid = None;
    }
}
