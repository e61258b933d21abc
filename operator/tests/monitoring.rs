//! The chart's monitoring: the PrometheusRule's rules parse and pass their promtool unit tests
//! (`tests/monitoring/rules.test.yaml`), every query of the Grafana dashboard parses, and every
//! metric a rule or a panel names is one the agent or the operator exports. Uses helm from the
//! project's tools and promtool (Debian package `prometheus`, installed by
//! `scripts/install-tools.sh`).

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{cmd:?}: {e} (scripts/install-tools.sh installs helm and promtool)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn promtool(dir: &Path, args: &[&str]) -> String {
    run(Command::new("promtool").args(args).current_dir(dir))
}

/// The chart rendered with every monitoring object on, as YAML documents.
fn monitoring_objects() -> Vec<serde_yaml::Value> {
    let out = run(Command::new(qis_testkit::controlplane::tool("helm"))
        .args([
            "template",
            "qis",
            "charts/qis-operator",
            "--set",
            "metrics.podMonitor.enabled=true",
            "--set",
            "metrics.prometheusRule.enabled=true",
            "--set",
            "grafana.dashboards.enabled=true",
            "--show-only",
            "templates/monitoring.yaml",
        ])
        .current_dir(qis_testkit::workspace_root()));
    serde_yaml::Deserializer::from_str(&out)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
        .filter(|v: &serde_yaml::Value| !v.is_null())
        .collect()
}

fn object<'a>(objects: &'a [serde_yaml::Value], kind: &str) -> &'a serde_yaml::Value {
    objects
        .iter()
        .find(|o| o["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("the chart renders no {kind}"))
}

/// The rules file the PrometheusRule carries.
fn rules_yaml(objects: &[serde_yaml::Value]) -> String {
    serde_yaml::to_string(&object(objects, "PrometheusRule")["spec"]).expect("rules")
}

/// The dashboard JSON the ConfigMap carries.
fn dashboard(objects: &[serde_yaml::Value]) -> Value {
    let data = &object(objects, "ConfigMap")["data"]["qis-operator.json"];
    serde_json::from_str(data.as_str().expect("dashboard text")).expect("dashboard JSON")
}

/// Every query of the dashboard: panel targets and template variables.
fn dashboard_queries(d: &Value) -> Vec<String> {
    let mut out: Vec<String> = d["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    out.extend(
        d["templating"]["list"]
            .as_array()
            .expect("templating")
            .iter()
            .filter_map(|v| v["query"]["query"].as_str())
            .filter_map(|q| label_values_selector(q).map(str::to_owned)),
    );
    out
}

/// The series selector of a `label_values(<selector>, <label>)` variable query.
fn label_values_selector(q: &str) -> Option<&str> {
    let inner = q.strip_prefix("label_values(")?.strip_suffix(')')?;
    Some(inner.rsplit_once(',')?.0.trim())
}

/// A Grafana query as plain PromQL: its variables replaced by values of their kind.
fn as_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$namespace", "factory")
        .replace("$swarm", "campus")
        .replace("$subject", "bearing")
}

/// The metric names a set of expressions uses (`qis_…`).
fn metric_names<'a>(exprs: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\bqis_[a-z0-9_]+").expect("regex");
    exprs
        .into_iter()
        .flat_map(|e| re.find_iter(e).map(|m| m.as_str().to_owned()))
        .collect()
}

/// Every series name the agent and the operator can export (counters with `_total`,
/// histograms with their `_bucket`, `_sum` and `_count`), read from their registries. A family
/// is encoded only once it has a series, so each labelled family gets one here: a family added
/// later and used by a rule shows up as missing until it is added below.
fn exported_names() -> BTreeSet<String> {
    use qis_agent::metrics as agent;
    use qis_operator::metrics as operator;
    let a = agent::Metrics::default();
    a.refused("oversize");
    let subject = || agent::SubjectLabel {
        subject: "bearing".into(),
    };
    a.consumer_lag.get_or_create(&subject()).set(1);
    a.synthesis_evictions
        .get_or_create(&agent::EvictionLabel {
            subject: "bearing".into(),
            reason: "voters",
        })
        .inc();
    a.consensus.set_exporting(true);
    a.consensus.sync(&std::collections::BTreeMap::from([(
        "bearing".to_owned(),
        qis_agent::subject_worker::View {
            snapshot: Some(qis_agent::synthesis::Snapshot {
                problem: "iot.bearing-wear".into(),
                strength: 1.0,
                weighted_confidence: 1.0,
                agents: 1,
                agreeing_agents: 1,
                newest: 1.0,
                packets: 1,
                synthesis_pairs: 0,
                dispersion: 0.0,
                effective_n: 1.0,
                alert: true,
                recommendation: String::new(),
            }),
            ..Default::default()
        },
    )]));
    let o = operator::Metrics::default();
    let kind = operator::KindLabel { kind: "swarm" };
    o.reconciles.get_or_create(&kind).inc();
    o.drift_reverted.get_or_create(&kind).inc();
    o.observe("swarm", std::time::Duration::from_millis(1));
    o.errors
        .get_or_create(&operator::ErrorLabels {
            kind: "swarm",
            reason: "NatsUnavailable",
        })
        .inc();
    o.api_writes
        .get_or_create(&operator::WriteLabels {
            kind: "swarm",
            what: "status",
        })
        .inc();
    o.sites.record(
        "factory",
        "campus",
        &[qis_crds::SiteStatus {
            name: "a".into(),
            ..Default::default()
        }],
    );
    let text = a.render() + &o.render();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("#") || words.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// Proves the alert rules load in Prometheus and behave as their unit tests say: each fires on
/// the trouble it names and not on the healthy case next to it.
#[test]
fn alert_rules_parse_and_pass_their_unit_tests() {
    let objects = monitoring_objects();
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("rules.yaml"), rules_yaml(&objects)).expect("rules");
    let tests = qis_testkit::workspace_root().join("operator/tests/monitoring/rules.test.yaml");
    std::fs::copy(&tests, dir.path().join("rules.test.yaml")).expect("tests");
    let checked = promtool(dir.path(), &["check", "rules", "rules.yaml"]);
    assert!(checked.contains("5 rules found"), "{checked}");
    promtool(dir.path(), &["test", "rules", "rules.test.yaml"]);
}

/// Proves every query of the dashboard is valid PromQL: each becomes a recording rule, which
/// promtool parses.
#[test]
fn every_dashboard_query_parses() {
    let queries = dashboard_queries(&dashboard(&monitoring_objects()));
    assert!(queries.len() >= 10, "{queries:?}");
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": as_promql(q)}))
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("dashboard.yaml"), file.to_string()).expect("write");
    let checked = promtool(dir.path(), &["check", "rules", "dashboard.yaml"]);
    assert!(
        checked.contains(&format!("{} rules found", queries.len())),
        "{checked}"
    );
}

/// Proves the rules and the dashboard name only metrics that exist: a renamed or missing
/// metric would leave an alert that never fires or an empty panel.
#[test]
fn rules_and_dashboard_name_only_exported_metrics() {
    let objects = monitoring_objects();
    let rules = rules_yaml(&objects);
    let queries = dashboard_queries(&dashboard(&objects));
    let used = metric_names(queries.iter().map(String::as_str).chain([rules.as_str()]));
    let exported = exported_names();
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "not exported: {missing:?} (exported: {exported:?})"
    );
    for needed in [
        "qis_agent_consensus_alert",
        "qis_operator_reconcile_errors_total",
    ] {
        assert!(used.contains(needed), "{needed} is not used: {used:?}");
    }
}

/// Proves the PodMonitor finds the operator's agent pods and names their swarm and site.
#[test]
fn the_pod_monitor_selects_agent_pods_by_the_labels_the_operator_sets() {
    let objects = monitoring_objects();
    let pm = object(&objects, "PodMonitor");
    let selector = &pm["spec"]["selector"]["matchLabels"];
    let labels = qis_operator::workload::labels("campus", Some("a"));
    let selector = selector.as_mapping().expect("matchLabels");
    assert!(!selector.is_empty());
    for (k, v) in selector {
        let (k, v) = (k.as_str().expect("key"), v.as_str().expect("value"));
        assert_eq!(labels.get(k).map(String::as_str), Some(v), "label {k}");
    }
    let relabel = serde_yaml::to_string(&pm["spec"]["podMetricsEndpoints"]).expect("yaml");
    for label in [
        qis_crds::constants::LABEL_SWARM,
        qis_crds::constants::LABEL_SITE,
    ] {
        let meta = format!(
            "__meta_kubernetes_pod_label_{}",
            label.replace(['.', '/', '-'], "_")
        );
        assert!(relabel.contains(&meta), "{meta} in {relabel}");
    }
}
