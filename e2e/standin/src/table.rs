//! `kubectl get` asks for `meta.k8s.io/v1` Tables: a Name column, the CRD's printer columns
//! (evaluated with a small JSONPath subset), and Age.

use crate::registry::Kind;
use serde_json::{Value, json};

/// Evaluates the JSONPath forms printer columns use: `.a.b.c` and
/// `.a.list[?(@.key=="value")].field`.
pub fn jsonpath(obj: &Value, path: &str) -> Option<Value> {
    let mut cur = obj.clone();
    let mut rest = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('.');
    while !rest.is_empty() {
        let (seg, next) = match rest.find(['.', '[']) {
            Some(0) => ("", rest),
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if !seg.is_empty() {
            cur = cur.get(seg)?.clone();
        }
        rest = next;
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = &r[..end];
            rest = &r[end + 1..];
            let list = cur.as_array()?.clone();
            cur = if let Some(filter) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')'))
            {
                let (key, want) = filter.split_once("==")?;
                let want = want.trim().trim_matches(|c| c == '"' || c == '\'');
                list.into_iter()
                    .find(|e| e.get(key.trim()).and_then(Value::as_str) == Some(want))?
            } else {
                list.get(inner.trim().parse::<usize>().ok()?)?.clone()
            };
        }
        rest = rest.trim_start_matches('.');
    }
    Some(cur)
}

/// Kubernetes' `HumanDuration` of the time since an RFC 3339 timestamp (what `kubectl get`
/// shows in date columns).
pub fn age(timestamp: &str) -> Option<String> {
    let t: k8s_openapi::jiff::Timestamp = timestamp.parse().ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let s = i64::try_from(now)
        .ok()?
        .saturating_sub(t.as_second())
        .max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    Some(if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        format!("{m}m{}s", s % 60)
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        format!("{h}h{}m", m % 60)
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        format!("{d}d{}h", h % 24)
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y{}d", d / 365, d % 365)
    })
}

fn cell(v: Option<Value>) -> Value {
    match v {
        None | Some(Value::Null) => json!("<none>"),
        Some(v) => v,
    }
}

/// The Table of `items`.
pub fn table(kind: &Kind, items: &[Value], resource_version: u64) -> Value {
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}),
    ];
    let mut paths = Vec::new();
    let printer: Vec<&Value> = kind.printer_columns.iter().collect();
    let has_age = printer
        .iter()
        .any(|c| c.get("jsonPath").and_then(Value::as_str) == Some(".metadata.creationTimestamp"));
    for c in &printer {
        columns.push(json!({"name": c["name"], "type": c["type"], "format": c.get("format").cloned().unwrap_or(json!("")),
            "description": c.get("description").cloned().unwrap_or(json!("")), "priority": c.get("priority").cloned().unwrap_or(json!(0))}));
        paths.push(c["jsonPath"].as_str().unwrap_or_default().to_owned());
    }
    if !has_age {
        columns.push(json!({"name": "Age", "type": "date", "format": "", "description": "Age", "priority": 0}));
        paths.push(".metadata.creationTimestamp".to_owned());
    }
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            for (p, c) in paths.iter().zip(columns.iter().skip(1)) {
                let v = jsonpath(o, p);
                let v = match (c["type"].as_str(), v) {
                    (Some("date"), Some(Value::String(t))) => age(&t).map(Value::String),
                    (_, v) => v,
                };
                cells.push(cell(v));
            }
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version.to_string()},
           "columnDefinitions": columns, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonpath_subset() {
        let o = json!({"status": {"address": "qis.a.b", "conditions": [{"type": "X", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(jsonpath(&o, ".status.address"), Some(json!("qis.a.b")));
        assert_eq!(
            jsonpath(&o, ".status.conditions[?(@.type==\"Ready\")].status"),
            Some(json!("True"))
        );
        assert_eq!(jsonpath(&o, ".status.conditions[0].type"), Some(json!("X")));
        assert_eq!(jsonpath(&o, ".status.missing"), None);
    }
}
