//! The kind e2e checks, against the cluster of the current kubeconfig and the NATS at
//! `QIS_E2E_NATS_URL` (port-forwarded by `e2e/kind/run.sh`): streams and consumers exist in
//! NATS, the agent Deployments are Ready on their halls, outcomes posted to two halls' agent
//! intakes (as devices do; port-forwarded by run.sh) become consensus in `kubectl get qsub`,
//! and deletion cleans NATS and the Deployments up. It also checks, on real nodes with real
//! images, that the API server refuses what the CRD schema and its CEL rules forbid and fills
//! the schema's defaults, and that the agents run under the restricted Pod Security Standard.

use async_nats::jetstream;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use qis_agent::packet::OutcomePacket;
use qis_crds::{QisSubject, QisSubjectSpec, QisSwarm, SwarmRef};
use qis_testkit::http::Http;
use std::process::ExitCode;
use std::time::Duration;

const NS: &str = "factory";
const STREAM: &str = "qis_factory_campus";

async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            println!("ok: {what}");
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `Ok` when `result` is the API server's 422 Invalid naming `needle`.
fn refused<T>(what: &str, result: Result<T, kube::Error>, needle: &str) -> Result<(), String> {
    match result {
        Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(needle) => {
            println!("ok: the API server refused {what}");
            Ok(())
        }
        Err(e) => Err(format!("{what}: expected 422 naming {needle:?}, got {e}")),
        Ok(_) => Err(format!("the API server admitted {what}")),
    }
}

/// Admission: the token pattern and a CEL immutability rule are enforced by the API server,
/// and the schema's defaults are filled in by it (the samples set no `maxConsumers`).
async fn admission(
    client: &Client,
    swarms: &Api<QisSwarm>,
    subjects: &Api<QisSubject>,
) -> Result<(), String> {
    let injection = QisSubject::new(
        "e2e-injection",
        QisSubjectSpec {
            swarm_ref: SwarmRef {
                name: "campus".into(),
            },
            domain: "hvac.>".into(),
            ..Default::default()
        },
    );
    refused(
        "a subject whose domain is `hvac.>`",
        subjects.create(&PostParams::default(), &injection).await,
        "spec.domain",
    )?;
    let moved = serde_json::json!({"spec": {"subjectPrefix": "qis.elsewhere"}});
    refused(
        "a changed subjectPrefix",
        swarms
            .patch("campus", &PatchParams::default(), &Patch::Merge(&moved))
            .await,
        "subjectPrefix is immutable",
    )?;
    let raw: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NS, &ApiResource::erase::<QisSwarm>(&()));
    let stored = raw.get("campus").await.map_err(|e| e.to_string())?;
    let max_consumers = &stored.data["spec"]["stream"]["maxConsumers"];
    if max_consumers != 10000 {
        return Err(format!(
            "stored spec.stream.maxConsumers is {max_consumers}, not the schema default 10000"
        ));
    }
    println!("ok: the API server filled spec.stream.maxConsumers = 10000");
    let ns = Api::<Namespace>::all(client.clone())
        .get(NS)
        .await
        .map_err(|e| e.to_string())?;
    let enforce = ns.labels().get("pod-security.kubernetes.io/enforce");
    if enforce.map(String::as_str) != Some("restricted") {
        return Err(format!(
            "namespace {NS} does not enforce the restricted Pod Security Standard ({enforce:?})"
        ));
    }
    Ok(())
}

/// POSTs one outcome packet to an agent's intake at `addr` (host:port, port-forwarded by
/// run.sh); the HTTP status.
async fn post_outcome(addr: &str, body: &[u8]) -> Result<u16, String> {
    let answer = Http::new(format!("http://{addr}"))
        .post("/v1/outcomes", body.to_vec(), &[])
        .await;
    if answer.answered() {
        Ok(answer.status)
    } else {
        Err(format!("intake {addr}: no answer"))
    }
}

async fn run() -> Result<(), String> {
    let client = Client::try_default().await.map_err(|e| e.to_string())?;
    let url =
        std::env::var("QIS_E2E_NATS_URL").map_err(|_| "QIS_E2E_NATS_URL is not set".to_owned())?;
    let js = jetstream::new(async_nats::connect(&url).await.map_err(|e| e.to_string())?);
    let swarms: Api<QisSwarm> = Api::namespaced(client.clone(), NS);
    let subjects: Api<QisSubject> = Api::namespaced(client.clone(), NS);
    let long = Duration::from_secs(300);

    eventually("swarm campus Ready (stream and agents)", long, || async {
        let s = swarms.get("campus").await.ok()?;
        s.status?
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await?;
    let info = js
        .get_stream(STREAM)
        .await
        .map_err(|e| format!("stream {STREAM}: {e}"))?
        .cached_info()
        .clone();
    if info.config.subjects != ["qis.campus.>"] {
        return Err(format!("stream subjects {:?}", info.config.subjects));
    }
    println!("ok: stream {STREAM} on qis.campus.>");
    let stream = js.get_stream(STREAM).await.map_err(|e| e.to_string())?;
    let mut names: Vec<String> = stream
        .consumer_names()
        .filter_map(|n| async move { n.ok() })
        .collect()
        .await;
    names.sort();
    for site in ["hall-a", "hall-b", "hall-c"] {
        for subject in ["bearing-wear", "hvac-energy", "maintenance"] {
            let want = format!("{subject}_{site}");
            if !names.contains(&want) {
                return Err(format!("consumer {want} missing; have {names:?}"));
            }
        }
    }
    println!("ok: 9 consumers (3 subjects x 3 halls)");
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    for site in ["hall-a", "hall-b", "hall-c"] {
        let d = Api::<Deployment>::namespaced(client.clone(), NS)
            .get(&format!("campus-agent-{site}"))
            .await
            .map_err(|e| e.to_string())?;
        let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
        if ready < 1 {
            return Err(format!("Deployment of {site} has {ready} ready replicas"));
        }
        let on = pods
            .list(&ListParams::default().labels(&format!("qis.dev/site={site}")))
            .await
            .map_err(|e| e.to_string())?;
        let node = on
            .items
            .first()
            .and_then(|p| p.spec.as_ref()?.node_name.clone())
            .unwrap_or_default();
        let labels = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
            .get(&node)
            .await
            .map_err(|e| e.to_string())?
            .labels()
            .clone();
        if labels.get("qis.dev/site").map(String::as_str) != Some(site) {
            return Err(format!(
                "the agent of {site} runs on {node}, labelled {labels:?}"
            ));
        }
    }
    println!("ok: one Ready agent per hall, pinned to its node");
    admission(&client, &swarms, &subjects).await?;
    println!("ok: the agents were admitted under Pod Security `restricted`");

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    for site in ["hall-a", "hall-b"] {
        let p = OutcomePacket {
            agent_id: format!("e2e-vibration-{site}"),
            domain: "predictive-maintenance".into(),
            problem_class: "bearing-wear".into(),
            conclusion: format!("e2e bearing wear at {site}"),
            confidence: 0.88,
            context_vector: vec![0.2, 0.9],
            timestamp: now,
            source_node: site.into(),
        };
        // The device path: the hall's agent intake (port-forwarded by run.sh), which checks,
        // deposits and counts the packet as a device's would be.
        let body = p.encode().map_err(|e| e.to_string())?;
        let var = format!("QIS_E2E_INTAKE_{}", site.replace('-', "_").to_uppercase());
        let addr = std::env::var(&var).map_err(|_| format!("{var} is not set"))?;
        let status = post_outcome(&addr, &body).await?;
        if status != 202 {
            return Err(format!("the {site} intake answered {status}, not 202"));
        }
    }
    eventually(
        "consensus of two halls in QisSubject bearing-wear",
        long,
        || async {
            let c = subjects.get("bearing-wear").await.ok()?.status?.consensus?;
            (c.agents == 2 && c.alert).then_some(())
        },
    )
    .await?;

    let patch = serde_json::json!({"spec": {"deletionPolicy": "delete"}});
    swarms
        .patch("campus", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| e.to_string())?;
    for s in ["bearing-wear", "hvac-energy", "maintenance"] {
        subjects
            .delete(s, &DeleteParams::default())
            .await
            .map_err(|e| e.to_string())?;
    }
    swarms
        .delete("campus", &DeleteParams::default())
        .await
        .map_err(|e| e.to_string())?;
    eventually("swarm and subjects deleted", long, || async {
        (swarms
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            && subjects
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty())
        .then_some(())
    })
    .await?;
    if js.get_stream(STREAM).await.is_ok() {
        return Err(format!("stream {STREAM} still exists after deletion"));
    }
    eventually("agent Deployments garbage-collected", long, || async {
        Api::<Deployment>::namespaced(client.clone(), NS)
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => {
            println!("e2e: all checks passed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("e2e FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
