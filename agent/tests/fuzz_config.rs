//! Schema-driven fuzzing of the agent's inputs: the `QIS_*` environment of a pod, `agent.yaml`
//! documents generated from the schema of `FileConfig` (its synthesis and addressing parts are
//! the CRD's own schema nodes), and subject settings → `Settings::from_crd` → `Synthesizer` fed
//! generated packets → snapshot → `subject_worker::synthesis_packet`.
//!
//! Checks: nothing panics (each input runs under `catch_unwind`); a configuration is either
//! usable (what the agent then derives from it works: a valid prefix and consumer names, an
//! outbox of at least one packet, synthesis packets that fit in 512 bytes) or refused naming
//! the variable or key, present in the input (or a required one that is absent); a
//! subject's settings are used or refused naming their field; a snapshot has no NaN or
//! infinity, and its strength and confidence lie in [0, 1].
//!
//! `QIS_FUZZ_OBJECTS` inputs per kind (CI: 5,000 environments, 600 documents, 3,000 settings); a failure prints its seed
//! (`QIS_FUZZ_SEED=<seed> QIS_FUZZ_OBJECTS=1` reproduces it).

use qis_agent::config::{Config, ConfigError, FileConfig, Mode};
use qis_agent::packet::{OutcomePacket, PacketMeta};
use qis_agent::synthesis::{Settings, Snapshot, Synthesizer};
use qis_crds::addressing;
use qis_testkit::schema_fuzz::{self, Generator, HOSTILE_STRINGS, Rng};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

const NOW: f64 = 1_764_150_100.0;

fn seed_of(base: u64, i: usize) -> u64 {
    base ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn base_seed() -> u64 {
    std::env::var("QIS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xA6E7_C0DE)
}

/// The subject CRD's schema node at `path` (`spec.synthesis`).
fn crd_node(path: &str) -> Value {
    let (_, crd) = &qis_crds::crdgen::all()[1];
    let root = serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema"),
    )
    .expect("json");
    schema_fuzz::schema_at(&root, path)
        .cloned()
        .expect("a node of the CRD schema")
}

/// The schema of `agent.yaml` (`FileConfig`), with the CRD's synthesis and addressing nodes.
fn file_schema() -> Value {
    let token = json!({"type": "string", "pattern": addressing::TOKEN_PATTERN});
    let path = json!({"type": "string"});
    json!({"type": "object", "required": ["agentId", "site", "nats", "subjectPrefix", "stream"],
    "properties": {
        "agentId": {"type": "string", "minLength": 1, "maxLength": 64},
        "site": token,
        "nats": {"type": "object", "required": ["url"], "properties": {
            "url": {"type": "string"}, "credsFile": path, "nkeyFile": path, "user": {"type": "string"},
            "passwordFile": path, "tokenFile": path, "caFile": path, "certFile": path,
            "keyFile": path, "jetstreamDomain": token}},
        "subjectPrefix": {"type": "string", "pattern": addressing::PREFIX_PATTERN},
        "stream": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,255}$"},
        "manageJetstream": {"type": "boolean"},
        "subjects": {"type": "array", "items": {"type": "object", "required": ["name", "domain"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"},
                "domain": token, "problemClass": token,
                "addressing": crd_node("spec.addressing"),
                "synthesis": crd_node("spec.synthesis")}}},
        "synthesis": crd_node("spec.synthesis"),
        "listen": {"type": "string"},
        "dataDir": path,
        "outboxMax": {"type": "integer", "minimum": 1}
    }})
}

#[derive(Debug, Default)]
struct Tally {
    inputs: usize,
    admissible: usize,
    accepted: usize,
    refused: BTreeMap<String, usize>,
}

fn class(field: &str) -> String {
    let mut out = String::new();
    let mut skip = false;
    for c in field.chars() {
        match c {
            '[' => {
                skip = true;
                out.push('[');
            }
            ']' => {
                skip = false;
                out.push(']');
            }
            _ if skip => {}
            c => out.push(c),
        }
    }
    out
}

/// What must hold of a configuration the agent accepted.
fn usable(c: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if addressing::check_prefix(&c.prefix).is_err() {
        out.push(format!(
            "prefix {:?} is not a prefix",
            truncate(&c.prefix, 80)
        ));
    }
    if addressing::check_token("site", &c.site).is_err() {
        out.push(format!(
            "site {:?} cannot name a consumer",
            truncate(&c.site, 80)
        ));
    }
    if c.stream.is_empty()
        || c.stream
            .chars()
            .any(|ch| ch.is_whitespace() || ch.is_control() || ".*>/\\".contains(ch))
    {
        out.push(format!(
            "stream {:?} is not a stream name",
            truncate(&c.stream, 80)
        ));
    }
    if c.outbox_max == 0 {
        out.push("an outbox of 0 packets".into());
    }
    if c.report_interval.is_zero() {
        out.push("report interval 0".into());
    }
    if c.agent_id.trim().is_empty() {
        out.push("empty agent id".into());
    }
    if let Mode::Standalone { subjects, .. } = &c.mode {
        let mut names = std::collections::BTreeSet::new();
        for s in subjects {
            if !qis_crds_dns_label(&s.name) {
                out.push(format!("subject name {:?} is not a DNS label", s.name));
            }
            if !names.insert(s.name.as_str()) {
                out.push(format!("subject {:?} listed twice", s.name));
            }
            let address = s.address(&c.prefix);
            if address.contains(['*', ' ']) || address.split('.').any(str::is_empty) {
                out.push(format!("address {address:?}"));
            }
        }
    }
    // A synthesis packet of the longest problem and recommendation still fits in 512 bytes.
    let snap = Snapshot {
        problem: format!("{}.{}", "d".repeat(64), "p".repeat(64)),
        strength: 0.123456789,
        weighted_confidence: 0.987654321,
        agents: 100_000,
        agreeing_agents: 100_000,
        newest: 1.0e9,
        packets: u64::MAX,
        synthesis_pairs: u64::MAX,
        dispersion: 0.5,
        effective_n: 12.5,
        alert: true,
        recommendation: "ALERT: 100000 agents agree on something (consensus=100%)".repeat(4),
    };
    if qis_agent::subject_worker::synthesis_packet(c, &format!("{}.x.y", c.prefix), &snap).is_none()
    {
        out.push(format!(
            "no synthesis packet fits for agent {:?} at site {:?}",
            truncate(&c.agent_id, 80),
            truncate(&c.site, 80)
        ));
    }
    out
}

fn qis_crds_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

const ENV_KEYS: &[&str] = &[
    "QIS_NATS_URL",
    "QIS_POD_NAME",
    "QIS_SITE",
    "QIS_SUBJECT_PREFIX",
    "QIS_STREAM",
    "QIS_NAMESPACE",
    "QIS_SWARM",
    "QIS_LISTEN",
    "QIS_DATA_DIR",
    "QIS_OUTBOX_MAX",
    "QIS_REPORT_INTERVAL",
    "QIS_JETSTREAM_DOMAIN",
];

/// A valid value of each variable, as the operator sets it.
fn env_valid(key: &str, rng: &mut Rng) -> String {
    let pick = |rng: &mut Rng, v: &[&str]| (*rng.pick(v)).to_owned();
    match key {
        "QIS_NATS_URL" => pick(rng, &["nats://nats:4222", "tls://a:4222,nats://b:4222"]),
        "QIS_POD_NAME" => pick(rng, &["plant-agent-a-5d9c7-x1", &"p".repeat(63)]),
        "QIS_SITE" => pick(rng, &["a", "hall-a", &"s".repeat(63)]),
        "QIS_SUBJECT_PREFIX" => pick(rng, &["qis.f.plant", &vec!["z".repeat(64); 8].join(".")]),
        "QIS_STREAM" => pick(
            rng,
            &[
                "qis_f_plant",
                &format!("qis_{}_{}", "n".repeat(63), "s".repeat(63)),
            ],
        ),
        "QIS_NAMESPACE" => pick(rng, &["f", &"n".repeat(63)]),
        "QIS_SWARM" => pick(rng, &["plant", &"s".repeat(63)]),
        "QIS_LISTEN" => pick(rng, &["0.0.0.0:8080", "127.0.0.1:0", "[::1]:9000"]),
        "QIS_DATA_DIR" => pick(rng, &["/var/lib/qis", "qis-data"]),
        "QIS_OUTBOX_MAX" => pick(rng, &["1", "10000", "1000000"]),
        "QIS_REPORT_INTERVAL" => pick(rng, &["5s", "1ns", "87600h", "500ms"]),
        _ => pick(rng, &["hub", "a_b-c"]),
    }
}

/// Edge and garbage values of any variable.
fn env_garbage(key: &str, rng: &mut Rng) -> String {
    let specific: &[&str] = match key {
        "QIS_OUTBOX_MAX" => &["0", "-1", "18446744073709551616", "1e3", " 5", "0x10"],
        "QIS_REPORT_INTERVAL" => &["0", "0s", "87600h1ns", "99999999999999999999s", "-1s", "5"],
        "QIS_LISTEN" => &[
            "0.0.0.0",
            ":8080",
            "localhost:8080",
            "0.0.0.0:65536",
            "[::1]",
        ],
        "QIS_NATS_URL" => &["http://x", "nats://", "a b", "nats://a:4222,", ","],
        "QIS_SUBJECT_PREFIX" | "QIS_SITE" | "QIS_JETSTREAM_DOMAIN" => {
            &["qis.>", "a.*", "a..b", "A", "a b", "_INBOX", "$JS"]
        }
        "QIS_STREAM" => &["a.b", "a b", "a*", "a>", "a/b", "a\\b"],
        _ => &[],
    };
    match rng.below(4) {
        0 if !specific.is_empty() => (*rng.pick(specific)).to_owned(),
        1 => "x".repeat(64 * 1024),
        _ => (*rng.pick(HOSTILE_STRINGS)).to_owned(),
    }
}

fn env_map(rng: &mut Rng) -> HashMap<String, String> {
    let clean = rng.percent(40);
    let mut env = HashMap::new();
    for key in ENV_KEYS {
        let r = rng.below(100);
        let value = if clean || r < 70 {
            // The optional ones are often absent.
            let optional = ["LISTEN", "DATA_DIR", "OUTBOX_MAX", "INTERVAL", "DOMAIN"]
                .iter()
                .any(|o| key.ends_with(o));
            if optional && rng.percent(50) {
                continue;
            }
            env_valid(key, rng)
        } else if r < 78 {
            continue;
        } else {
            env_garbage(key, rng)
        };
        env.insert((*key).to_owned(), value);
    }
    env
}

/// Does a configuration refusal name a variable of `env` (or a required one that is unset)?
fn env_names_its_variable(e: &ConfigError, env: &HashMap<String, String>) -> bool {
    match e {
        ConfigError::Invalid { field, .. } => env.contains_key(field),
        ConfigError::MissingEnv(k) => env.get(*k).is_none_or(String::is_empty),
        ConfigError::File(..) => false,
    }
}

/// Does a refusal of an `agent.yaml` document name a key of it? `Invalid` names a path of the
/// document (or a field the schema defines under a present object); a parse error names its
/// path (`subjects[0].synthesis.window: …`) or the key in backticks (missing/unknown field);
/// a document that is not a mapping is refused as such (`expected struct FileConfig`), and a
/// YAML syntax error names its line and column.
fn yaml_names_its_key(e: &ConfigError, schema: &Value, doc: &Value) -> bool {
    match e {
        ConfigError::Invalid { field, .. } => schema_fuzz::names_a_field(schema, doc, field),
        ConfigError::File(_, message) => parse_error_names_key(message, schema, doc),
        ConfigError::MissingEnv(_) => false,
    }
}

fn parse_error_names_key(message: &str, schema: &Value, doc: &Value) -> bool {
    let path = message.split(": ").next().unwrap_or_default();
    if !path.contains(' ') && schema_fuzz::names_a_field(schema, doc, path) {
        return true;
    }
    // A document that is not a mapping at all, or not YAML (a syntax error names its line and
    // column): the refusal is about the document itself.
    if message.contains("expected struct FileConfig")
        || (message.contains(" at line ") && message.contains("while parsing"))
    {
        return true;
    }
    // `missing field `agentId``, `unknown field `x`, expected one of …`.
    message
        .split('`')
        .nth(1)
        .is_some_and(|key| message.contains(" field `") && !key.is_empty())
}

fn yaml_of(rng: &mut Rng, doc: &Value) -> String {
    let text = serde_yaml::to_string(doc).unwrap_or_default();
    // Now and then, the text itself is broken: YAML that is not JSON-shaped.
    match rng.below(20) {
        0 => format!("{text}\n  : : :\n"),
        1 => text.replacen(':', "", 1),
        2 => format!("{text}agentId: again\n"),
        _ => text,
    }
}

fn run(label: &str, default: usize, mut one: impl FnMut(u64, &mut Tally) -> Vec<String>) {
    let n = schema_fuzz::count_from_env("QIS_FUZZ_OBJECTS", default);
    let base = base_seed();
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut failed = Vec::new();
    for i in 0..n {
        let seed = if n == 1 { base } else { seed_of(base, i) };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut t = Tally::default();
            let f = one(seed, &mut t);
            (t, f)
        }));
        match outcome {
            Ok((t, f)) => {
                tally.inputs += t.inputs;
                tally.admissible += t.admissible;
                tally.accepted += t.accepted;
                for (k, v) in t.refused {
                    *tally.refused.entry(k).or_default() += v;
                }
                if let Some(first) = f.into_iter().next() {
                    failed.push(format!("seed {seed}: {first}"));
                }
            }
            Err(p) => {
                let text = p
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                failed.push(format!("seed {seed}: panic: {text}"));
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{label}: {} inputs in {secs:.1} s; admissible {}; accepted {}; refused {}",
        tally.inputs,
        tally.admissible,
        tally.accepted,
        tally.refused.values().sum::<usize>()
    );
    for (f, c) in &tally.refused {
        eprintln!("    {c:>7}  {f}");
    }
    assert!(
        failed.is_empty(),
        "{} of {n} failed (QIS_FUZZ_SEED=<seed> QIS_FUZZ_OBJECTS=1 reproduces one):\n{}",
        failed.len(),
        failed
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    if n >= 1000 {
        assert!(
            tally.accepted > n / 50 && !tally.refused.is_empty(),
            "both outcomes are reached: {tally:?}"
        );
    }
}

/// Proves that any `QIS_*` environment gives a usable configuration or a refusal naming the
/// variable, and never a panic.
#[test]
fn environment() {
    run("QIS_* environment", 5_000, |seed, t| {
        let mut rng = Rng::new(seed);
        let env = env_map(&mut rng);
        t.inputs += 1;
        match Config::from_env(|k| env.get(k).cloned()) {
            Ok(c) => {
                t.accepted += 1;
                usable(&c)
                    .into_iter()
                    .map(|p| format!("accepted, unusable: {p}"))
                    .collect()
            }
            Err(e) if env_names_its_variable(&e, &env) => {
                let key = match &e {
                    ConfigError::Invalid { field, .. } => field.clone(),
                    ConfigError::MissingEnv(k) => format!("{k} (unset)"),
                    ConfigError::File(..) => String::new(),
                };
                *t.refused.entry(key).or_default() += 1;
                vec![]
            }
            Err(e) => vec![format!("refusal names no variable of the input: {e}")],
        }
    });
}

/// Proves that any generated `agent.yaml` gives a usable configuration whose subjects are
/// served or refused naming their field, or a refusal naming its key; never a panic.
#[test]
fn agent_yaml() {
    let schema = file_schema();
    run("agent.yaml", 600, |seed, t| {
        let mut g = Generator::new(seed);
        let doc = g.generate(&schema);
        let text = yaml_of(&mut g.rng, &doc);
        t.inputs += 1;
        if schema_fuzz::admit(&schema, &doc).is_ok() {
            t.admissible += 1;
        }
        let parsed = serde_yaml::from_str::<FileConfig>(&text)
            .map_err(|e| ConfigError::File("agent.yaml".into(), e.to_string()))
            .and_then(Config::from_file_config);
        match parsed {
            Ok(c) => {
                t.accepted += 1;
                let mut problems: Vec<String> = usable(&c)
                    .into_iter()
                    .map(|p| format!("accepted, unusable: {p}"))
                    .collect();
                if let Mode::Standalone { subjects, defaults } = &c.mode {
                    for s in subjects {
                        if let Err(e) = Settings::from_crd(&s.synthesis.or(defaults))
                            && e.field.is_empty()
                        {
                            problems.push(format!("subject refused naming no field: {e}"));
                        }
                    }
                }
                problems
            }
            Err(e) if yaml_names_its_key(&e, &schema, &doc) => {
                let key = match &e {
                    ConfigError::Invalid { field, .. } => class(field),
                    _ => "(parse error)".into(),
                };
                *t.refused.entry(key).or_default() += 1;
                vec![]
            }
            Err(e) => vec![format!(
                "refusal names no key of the document: {e}\n  document: {}",
                truncate(&text, 2000)
            )],
        }
    });
}

/// A packet the intake admits: generated around the bounds, then kept if it validates.
fn packet(
    rng: &mut Rng,
    agents: &[String],
    problems: &[(&str, &str)],
    now: f64,
) -> Option<(OutcomePacket, PacketMeta)> {
    let (domain, problem_class) = *rng.pick(problems);
    let (r1, r2) = (rng.float(0.0, 1.0), rng.float(0.0, 7200.0));
    let confidence = *rng.pick(&[0.0, 1.0, 5e-324, 0.5, 0.999_999_999_999_999_9, 1e-300, r1]);
    let age = *rng.pick(&[
        0.0, 1.0, 59.0, 1075.0, 3599.999, 3600.0, 86_400.0, 1e9, -1e6, -1e300, r2,
    ]);
    let timestamp = *rng.pick(&[now - age, 5e-324, f64::MAX, 1.0, now]);
    let p = OutcomePacket {
        agent_id: rng.pick(agents).clone(),
        domain: domain.into(),
        problem_class: problem_class.into(),
        conclusion: "c".into(),
        confidence,
        context_vector: vec![],
        timestamp,
        source_node: "n".into(),
    };
    let body = p.encode().ok()?;
    let meta = if rng.percent(5) {
        PacketMeta::synthesis(&body, 0)
    } else {
        PacketMeta::outcome(&body)
    };
    Some((p, meta))
}

fn snapshot_problems(s: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (name, x) in [
        ("strength", s.strength),
        ("weightedConfidence", s.weighted_confidence),
        ("dispersion", s.dispersion),
        ("effectiveN", s.effective_n),
    ] {
        if !x.is_finite() {
            out.push(format!("{name} is {x}"));
        }
    }
    for (name, x) in [
        ("strength", s.strength),
        ("weightedConfidence", s.weighted_confidence),
    ] {
        if !(0.0..=1.0).contains(&x) {
            out.push(format!("{name} {x} is outside [0, 1]"));
        }
    }
    out
}

/// Proves that subject settings generated from the CRD's synthesis schema are used or refused
/// naming their field, and that a synthesizer fed generated packets gives snapshots with no
/// NaN or infinity, strength and confidence in [0, 1], and a synthesis packet that decodes.
#[test]
fn synthesis_from_the_schema() {
    let schema = crd_node("spec.synthesis");
    let config = Config::from_file_config(
        serde_yaml::from_str(
            "agentId: pump-7\nsite: hall-a\nnats: {url: 'nats://127.0.0.1:4222'}\nsubjectPrefix: qis.iot\nstream: QIS\n",
        )
        .expect("yaml"),
    )
    .expect("config");
    run("synthesis", 3_000, |seed, t| {
        let mut g = Generator::new(seed);
        let v = g.generate(&schema);
        t.inputs += 1;
        if schema_fuzz::admit(&schema, &v).is_ok() {
            t.admissible += 1;
        }
        let Ok(crd) = serde_json::from_value::<qis_crds::SynthesisSettings>(v.clone()) else {
            *t.refused.entry("(decode)".into()).or_default() += 1;
            return vec![];
        };
        let settings = match Settings::from_crd(&crd) {
            Ok(s) => s,
            Err(e) => {
                if schema_fuzz::names_a_field(&schema, &v, e.field) {
                    *t.refused.entry(e.field.to_owned()).or_default() += 1;
                    return vec![];
                }
                return vec![format!("refusal names no field of {v}: {e}")];
            }
        };
        t.accepted += 1;
        let mut synth = Synthesizer::new(settings);
        let rng = &mut g.rng;
        let agents: Vec<String> = (0..1 + rng.below(12))
            .map(|i| format!("agent-{i}"))
            .collect();
        let problems = [("hvac", "a"), ("hvac", "b"), ("d", "c")];
        let mut out = Vec::new();
        let mut now = NOW;
        for _ in 0..rng.below(60) {
            if let Some((p, meta)) = packet(rng, &agents, &problems, now) {
                synth.ingest(&p, &meta, now);
            }
            if rng.percent(20) {
                now += *rng.pick(&[0.0, 1.0, 600.0, 3600.0, 1e7]);
                if let Some(s) = synth.snapshot(now) {
                    out.extend(snapshot_problems(&s));
                    let address = "qis.iot.hvac.>";
                    match qis_agent::subject_worker::synthesis_packet(&config, address, &s) {
                        Some((_, body, _)) => {
                            if OutcomePacket::decode(&body).is_err() {
                                out.push("a synthesis packet that does not decode".into());
                            }
                        }
                        None => out.push(format!("no synthesis packet for {s:?}")),
                    }
                }
            }
        }
        out.into_iter()
            .map(|p| format!("settings {v}: {p}"))
            .collect()
    });
}
