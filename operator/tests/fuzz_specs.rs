//! Schema-driven fuzzing of the operator's pure path: objects generated from the generated CRD
//! schemas (`qis_testkit::schema_fuzz`) go through decode → validate → build (stream config,
//! sites, Deployments, ServiceAccount/Role/RoleBinding; consumer configs) with no Kubernetes
//! and no NATS.
//!
//! Two checks. (1) An object the schema admits (as the API server stores it: pruned,
//! defaulted) decodes, and is then either accepted by validation and built into objects the
//! Kubernetes API server and nats-server take, or refused with `InvalidSpec` naming a field of
//! the object. (2) Any object, admissible or not, never panics anywhere, and a refusal by
//! validation names a field of the object.
//!
//! "Names a field": the refusal's field path (`spec.synthesis.window`, `spec.sites[2].name`)
//! is present in the object, or is a field the schema defines directly under an object that is
//! present (a field whose absence is the fault); the bare `spec` does not count.
//!
//! CI runs `QIS_FUZZ_OBJECTS` (default 1,500) objects per kind; every failure prints the seed
//! of its object (`QIS_FUZZ_SEED=<seed> QIS_FUZZ_OBJECTS=1` reproduces it) and the object,
//! minimized.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use kube::api::ObjectMeta;
use qis_crds::{QisSubject, QisSwarm};
use qis_operator::error::Error;
use qis_operator::{consumer_config, sites, stream_config, validate, workload};
use qis_testkit::schema_fuzz::{self, Generator, Rng};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

fn crd_schema(kind: usize) -> Value {
    let (_, crd) = &qis_crds::crdgen::all()[kind];
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema"),
    )
    .expect("json")
}

/// Seed of object `i`: each object reproduces on its own.
fn seed_of(base: u64, i: usize) -> u64 {
    base ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn base_seed() -> u64 {
    std::env::var("QIS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_F00D)
}

/// A DNS label of 1 to 63 characters: metadata names are the API server's, always valid.
fn dns_label(rng: &mut Rng) -> String {
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-";
    match rng.below(4) {
        0 => "a".repeat(63),
        1 => format!("a{}z", "-".repeat(61)),
        _ => {
            let n = rng.below(20);
            let mid: String = (0..n).map(|_| char::from(*rng.pick(ALPHA))).collect();
            format!("a{mid}0")
        }
    }
}

fn object(kind: usize, schema: &Value, seed: u64) -> Value {
    let mut g = Generator::new(seed);
    let mut obj = g.generate(schema);
    let name = dns_label(&mut g.rng);
    let namespace = dns_label(&mut g.rng);
    if let Some(o) = obj.as_object_mut() {
        o.insert(
            "apiVersion".into(),
            json!(format!(
                "{}/{}",
                qis_crds::constants::API_GROUP,
                qis_crds::constants::API_VERSION
            )),
        );
        o.insert("kind".into(), json!(["QisSwarm", "QisSubject"][kind]));
        o.insert(
            "metadata".into(),
            json!({"name": name, "namespace": namespace, "uid": "0d9f6a4e", "generation": 1}),
        );
    }
    obj
}

/// What went wrong with one object.
#[derive(Debug)]
struct Failure {
    what: String,
}

#[derive(Debug, Default)]
struct Tally {
    objects: usize,
    admissible: usize,
    decode_refused: BTreeMap<String, usize>,
    accepted: usize,
    refused: BTreeMap<String, usize>,
    built: usize,
}

/// `spec.sites[12].name` → `spec.sites[].name`, to count refusals by field.
fn field_class(field: &str) -> String {
    let mut out = String::new();
    let mut in_index = false;
    for c in field.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            c => out.push(c),
        }
    }
    out
}

fn refusal_field(e: &Error) -> Option<&str> {
    match e {
        Error::InvalidSpec { field, .. } => Some(field),
        _ => None,
    }
}

fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && v.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric()))
}

/// RFC 1123 subdomain, as Kubernetes checks object names: at most 253 characters, labels of
/// lowercase letters, digits and '-' (no per-label length limit in its check).
fn is_dns_subdomain(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 253
        && v.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// A NATS stream or consumer name: no whitespace, `.`, `*`, `>`, path separators.
fn is_nats_name(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 255
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c))
}

/// A NATS subject (filter): non-empty printable tokens, `>` only last.
fn is_nats_subject(v: &str) -> bool {
    let tokens: Vec<&str> = v.split('.').collect();
    tokens.iter().enumerate().all(|(i, t)| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_graphic() && c != '*' && (c != '>' || *t == ">"))
            && (*t != ">" || i == tokens.len() - 1)
    })
}

/// What the API server refuses in the parts of a Deployment that come from a swarm's spec.
fn deployment_problems(d: &Deployment) -> Vec<String> {
    let mut out = Vec::new();
    let name = d.metadata.name.as_deref().unwrap_or_default();
    if !is_dns_subdomain(name) {
        out.push(format!("Deployment name {name:?} is not a DNS subdomain"));
    }
    let labels = d.metadata.labels.iter().flatten();
    let Some(spec) = d.spec.as_ref() else {
        return vec!["no spec".into()];
    };
    let pod = spec.template.spec.as_ref();
    let selector = pod
        .and_then(|p| p.node_selector.as_ref())
        .into_iter()
        .flatten();
    for (k, v) in labels.chain(selector) {
        if !validate::is_label_key(k) || !is_label_value(v) {
            out.push(format!("label or node selector {k:?}={v:?} is not a label"));
        }
    }
    if spec.replicas.is_some_and(|r| r < 0) {
        out.push("negative replicas".into());
    }
    for t in pod
        .and_then(|p| p.tolerations.as_ref())
        .into_iter()
        .flatten()
    {
        let op = t.operator.as_deref().unwrap_or("Equal");
        let effect = t.effect.as_deref().unwrap_or("");
        let key = t.key.as_deref().unwrap_or("");
        if !["Exists", "Equal"].contains(&op)
            || !["", "NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect)
            || (!key.is_empty() && !validate::is_label_key(key))
            || (key.is_empty() && op != "Exists")
            || (op == "Exists" && t.value.as_deref().is_some_and(|v| !v.is_empty()))
            || (op == "Equal" && !is_label_value(t.value.as_deref().unwrap_or("")))
            || (t.toleration_seconds.is_some() && effect != "NoExecute")
        {
            out.push(format!("toleration {t:?} is refused"));
        }
    }
    for c in pod.map(|p| p.containers.as_slice()).unwrap_or_default() {
        let mut names = std::collections::BTreeSet::new();
        for e in c.env.iter().flatten() {
            // Kubernetes 1.34+: any printable ASCII but '='.
            if e.name.is_empty() || !e.name.bytes().all(|b| (32..127).contains(&b) && b != b'=') {
                out.push(format!("env name {:?} is refused", e.name));
            }
            if !names.insert(e.name.clone()) {
                out.push(format!("env name {:?} is repeated", e.name));
            }
        }
        match c.image.as_deref() {
            Some(i) if !i.trim().is_empty() && !i.contains(char::is_whitespace) => {}
            other => out.push(format!("image {other:?}")),
        }
        if let Some(p) = c.image_pull_policy.as_deref()
            && !["Always", "IfNotPresent", "Never"].contains(&p)
        {
            out.push(format!("imagePullPolicy {p:?}"));
        }
    }
    out
}

/// Nodes labelled with the discovery label: valid and hostile values.
fn nodes(label: &str, rng: &mut Rng) -> Vec<Node> {
    (0..rng.below(6))
        .map(|i| {
            let value = match rng.below(3) {
                0 => (*rng.pick(schema_fuzz::HOSTILE_STRINGS)).to_owned(),
                _ => dns_label(rng),
            };
            Node {
                metadata: ObjectMeta {
                    name: Some(format!("n{i}")),
                    labels: Some(BTreeMap::from([(label.to_owned(), value)])),
                    ..Default::default()
                },
                ..Default::default()
            }
        })
        .collect()
}

/// validate → build of one swarm; `Err` is validation's refusal, problems of what was built
/// are pushed to `problems`.
fn swarm_path(s: &QisSwarm, rng: &mut Rng, problems: &mut Vec<String>) -> Result<(), Error> {
    validate::swarm(&s.spec)?;
    let (ns, name) = (
        s.metadata.namespace.clone().unwrap_or_default(),
        s.metadata.name.clone().unwrap_or_default(),
    );
    let prefix = stream_config::prefix(&ns, &name, &s.spec);
    let stream = stream_config::desired(&ns, &name, &s.spec);
    if !is_nats_name(&stream.name) {
        problems.push(format!("stream name {:?}", stream.name));
    }
    if !stream.subjects.iter().all(|s| is_nats_subject(s)) {
        problems.push(format!("stream subjects {:?}", stream.subjects));
    }
    if Ok(stream.max_age) != s.spec.stream.max_age.get()
        || Ok(stream.duplicate_window) != s.spec.stream.duplicate_window.get()
    {
        problems.push("a duration of the stream is not the spec's".into());
    }
    if usize::try_from(stream.max_message_size).unwrap_or(0) < validate::MIN_MAX_MSG_SIZE {
        problems.push(format!("maxMsgSize {}", stream.max_message_size));
    }
    if stream.max_consumers < 1 || stream.num_replicas > 5 {
        problems.push(format!(
            "maxConsumers {} / replicas {}",
            stream.max_consumers, stream.num_replicas
        ));
    }
    let label = s
        .spec
        .site_discovery
        .as_ref()
        .map_or(qis_crds::constants::SITE_NODE_LABEL, |d| {
            d.node_label.as_str()
        });
    let resolved = sites::resolve(&s.spec, &nodes(label, rng));
    let defaults = workload::Defaults {
        agent_image: "ghcr.io/qis/agent:0.1.0".into(),
        nats_url: "nats://nats:4222".into(),
    };
    for site in &resolved.sites {
        let d = workload::deployment(s, site, &prefix, &stream.name, &defaults);
        problems.extend(deployment_problems(&d));
    }
    let _ = (
        workload::service_account(s),
        workload::role(s),
        workload::role_binding(s),
    );
    Ok(())
}

const PREFIXES: &[&str] = &["qis.f.plant", "a", "qis"];

fn subject_path(s: &QisSubject, rng: &mut Rng, problems: &mut Vec<String>) -> Result<(), Error> {
    validate::subject(&s.spec)?;
    let long = vec!["z".repeat(64); 8].join(".");
    let prefix = if rng.percent(20) {
        long.as_str()
    } else {
        *rng.pick(PREFIXES)
    };
    let (ns, name) = (
        s.metadata.namespace.clone().unwrap_or_default(),
        s.metadata.name.clone().unwrap_or_default(),
    );
    let address = consumer_config::address(prefix, &s.spec);
    if !is_nats_subject(&address) {
        problems.push(format!("address {address:?}"));
    }
    let site = dns_label(rng);
    let c = consumer_config::desired(&ns, &name, &site, &address, &s.spec);
    let durable = c.durable_name.clone().unwrap_or_default();
    if !is_nats_name(&durable) {
        problems.push(format!("consumer name {durable:?}"));
    }
    if c.ack_wait.is_zero() || c.backoff.iter().any(|b| b.is_zero()) {
        problems.push("ackWait or a backoff is zero".into());
    }
    if c.max_deliver != -1 && (c.backoff.len() as i64) >= c.max_deliver {
        problems.push("backoff has as many entries as maxDeliver".into());
    }
    let by_start = matches!(
        c.deliver_policy,
        async_nats::jetstream::consumer::DeliverPolicy::ByStartTime { .. }
    );
    if by_start != (s.spec.consumer.deliver_policy == qis_crds::DeliverPolicy::ByStartTime) {
        problems.push(format!("deliver policy {:?}", c.deliver_policy));
    }
    Ok(())
}

/// Decodes `v` as the operator's watch does (the whole object); on failure, the path of the
/// field the decoder refused.
fn decode<K: serde::de::DeserializeOwned>(v: &Value) -> Result<K, String> {
    serde_path_to_error::deserialize::<_, K>(v.clone()).map_err(|e| {
        let path = e.path().to_string();
        format!("{path}: {}", e.into_inner())
    })
}

/// One object: decode → validate → build on the stored form when admissible (check 1), and
/// on the object as generated (check 2).
fn one<K, F>(schema: &Value, obj: &Value, seed: u64, path: &F, tally: &mut Tally) -> Vec<Failure>
where
    K: serde::de::DeserializeOwned,
    F: Fn(&K, &mut Rng, &mut Vec<String>) -> Result<(), Error>,
{
    let mut failures = Vec::new();
    // The API server checks metadata itself; the schema's `metadata` node has no properties.
    let stored = schema_fuzz::admit(schema, obj).ok().map(|mut s| {
        s["metadata"] = obj["metadata"].clone();
        s
    });
    tally.objects += 1;
    if stored.is_some() {
        tally.admissible += 1;
    }
    for (form, v) in [("stored", stored.as_ref()), ("raw", Some(obj))] {
        let Some(v) = v else { continue };
        let decoded = match decode::<K>(v) {
            Ok(k) => k,
            Err(e) => {
                if form == "stored" {
                    failures.push(Failure {
                        what: format!("admissible object does not decode: {e}"),
                    });
                } else {
                    let at = e.split(':').next().unwrap_or_default();
                    *tally.decode_refused.entry(field_class(at)).or_default() += 1;
                }
                continue;
            }
        };
        let mut rng = Rng::new(seed);
        let mut problems = Vec::new();
        match path(&decoded, &mut rng, &mut problems) {
            Ok(()) => {
                if form == "stored" {
                    tally.accepted += 1;
                    tally.built += 1;
                }
                for p in problems {
                    failures.push(Failure {
                        what: format!("{form}: accepted, built something refused: {p}"),
                    });
                }
            }
            Err(e) => match refusal_field(&e) {
                Some(f) if f != "spec" && schema_fuzz::names_a_field(schema, v, f) => {
                    if form == "stored" {
                        *tally.refused.entry(field_class(f)).or_default() += 1;
                    }
                }
                _ => failures.push(Failure {
                    what: format!("{form}: refusal names no field of the object: {e}"),
                }),
            },
        }
    }
    failures
}

fn run<K, F>(kind: usize, label: &str, default: usize, path: F)
where
    K: serde::de::DeserializeOwned,
    F: Fn(&K, &mut Rng, &mut Vec<String>) -> Result<(), Error>,
{
    let schema = crd_schema(kind);
    let n = schema_fuzz::count_from_env("QIS_FUZZ_OBJECTS", default);
    let base = base_seed();
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut failed: Vec<String> = Vec::new();
    for i in 0..n {
        let seed = if n == 1 { base } else { seed_of(base, i) };
        let obj = object(kind, &schema, seed);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut t = Tally::default();
            let f = one::<K, F>(&schema, &obj, seed, &path, &mut t);
            (t, f)
        }));
        let failures = match outcome {
            Ok((t, f)) => {
                merge(&mut tally, t);
                f
            }
            Err(p) => vec![Failure {
                what: format!("panic: {}", panic_text(&p)),
            }],
        };
        if let Some(first) = failures.first() {
            if failed.len() < 3 {
                // The same failure: the same words up to the second ':' (kind and field).
                let key = |w: &str| w.splitn(3, ':').take(2).collect::<Vec<_>>().join(":");
                let mut same = |v: &Value| {
                    let mut v = v.clone();
                    for k in ["apiVersion", "kind", "metadata"] {
                        v[k] = obj[k].clone();
                    }
                    let again = catch_unwind(AssertUnwindSafe(|| {
                        let f = one::<K, F>(&schema, &v, seed, &path, &mut Tally::default());
                        f.first().map(|f| f.what.clone())
                    }));
                    match again {
                        Ok(Some(w)) => key(&w) == key(&first.what),
                        Ok(None) => false,
                        Err(_) => first.what.starts_with("panic"),
                    }
                };
                let small = schema_fuzz::minimize(&obj, &mut same);
                failed.push(format!(
                    "seed {seed}: {}\n  object (minimized): {}",
                    first.what,
                    truncate(&small.to_string(), 2000)
                ));
            } else {
                failed.push(format!("seed {seed}: {}", first.what));
            }
        }
    }
    report(label, n, &tally, started);
    assert!(
        failed.is_empty(),
        "{} of {n} {label} objects failed (QIS_FUZZ_SEED=<seed> QIS_FUZZ_OBJECTS=1 reproduces one):\n{}",
        failed.len(),
        failed
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Both outcomes are reached, or the generator has stopped covering the path.
    if n >= 1000 {
        assert!(tally.accepted > n / 50, "too few accepted: {tally:?}");
        assert!(!tally.refused.is_empty() && !tally.decode_refused.is_empty());
    }
}

fn merge(into: &mut Tally, t: Tally) {
    into.objects += t.objects;
    into.admissible += t.admissible;
    into.accepted += t.accepted;
    into.built += t.built;
    for (k, v) in t.refused {
        *into.refused.entry(k).or_default() += v;
    }
    for (k, v) in t.decode_refused {
        *into.decode_refused.entry(k).or_default() += v;
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_owned();
    }
    let cut = (0..=n).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
    format!("{}… ({} bytes)", &s[..cut], s.len())
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

fn report(label: &str, n: usize, t: &Tally, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{label}: {n} objects in {secs:.1} s ({:.0}/s); admissible {} (accepted and built {}, refused {}); not admissible {}",
        n as f64 / secs,
        t.admissible,
        t.accepted,
        t.refused.values().sum::<usize>(),
        t.objects - t.admissible,
    );
    eprintln!("  refused by validation (admissible objects), by field:");
    for (f, c) in &t.refused {
        eprintln!("    {c:>7}  {f}");
    }
    eprintln!("  refused by the decoder (objects as generated), by field:");
    for (f, c) in &t.decode_refused {
        eprintln!("    {c:>7}  {f}");
    }
}

/// Proves that no generated swarm panics the operator's path, that every admissible swarm
/// decodes and is either built into objects the API server and nats-server take or refused
/// naming a field of it.
#[test]
fn swarms_from_the_schema() {
    run::<QisSwarm, _>(0, "QisSwarm", 1_500, swarm_path);
}

/// The same for subjects: decode → validate → address → consumer config.
#[test]
fn subjects_from_the_schema() {
    run::<QisSubject, _>(1, "QisSubject", 1_500, subject_path);
}
