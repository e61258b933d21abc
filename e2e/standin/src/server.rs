//! The HTTP surface: discovery, CRUD, patch, status subresources, list, watch, and Tables.

use crate::registry::Kind;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{ApiError, Change, PatchType, Store};
use crate::table;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub type Shared = Arc<Mutex<Store>>;

/// Locks the store (a poisoned lock is still usable: writes are whole).
pub fn lock(s: &Shared) -> MutexGuard<'_, Store> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn error(e: &ApiError) -> Response {
    json_response(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.status(),
    )
}

/// One parsed resource path.
struct Target {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn group_list(store: &Store) -> Value {
    let mut groups: Vec<(String, String)> = store
        .kinds
        .iter()
        .filter(|k| !k.group.is_empty())
        .map(|k| (k.group.clone(), k.version.clone()))
        .collect();
    groups.sort();
    groups.dedup();
    let groups: Vec<Value> = groups
        .iter()
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(store: &Store, group: &str, version: &str) -> Option<Value> {
    let kinds: Vec<&Kind> = store
        .kinds
        .iter()
        .filter(|k| k.group == group && k.version == version)
        .collect();
    if kinds.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    let resources: Vec<Value> = kinds.iter().flat_map(|k| k.discovery()).collect();
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

fn parse_target(store: &Store, segments: &[&str]) -> Result<Target, ApiError> {
    let not_found = || {
        ApiError::new(
            404,
            "NotFound",
            format!(
                "the server could not find the requested resource /{}",
                segments.join("/")
            ),
        )
    };
    let (group, rest) = match segments {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return Err(not_found()),
    };
    let find = |plural: &str| store.kind(group, plural);
    match rest {
        ["namespaces", ns, plural, tail @ ..] if find(plural).is_some_and(|k| k.namespaced) => {
            Ok(Target {
                kind: find(plural).ok_or_else(not_found)?,
                namespace: Some((*ns).to_owned()),
                name: tail.first().map(|s| (*s).to_owned()),
                subresource: tail.get(1).map(|s| (*s).to_owned()),
            })
        }
        [plural, tail @ ..] => Ok(Target {
            kind: find(plural).ok_or_else(not_found)?,
            namespace: None,
            name: tail.first().map(|s| (*s).to_owned()),
            subresource: tail.get(1).map(|s| (*s).to_owned()),
        }),
        [] => Err(not_found()),
    }
}

fn query(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    Some((decode(k)?, decode(v)?))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                out.push(
                    u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?, 16).ok()?,
                );
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn parse_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let parsed = if ct.contains("yaml") {
        serde_yaml::from_slice::<Value>(body).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice::<Value>(body).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| ApiError::new(400, "BadRequest", format!("cannot parse the body: {e}")))
}

fn with_list_kind(kind: &Kind, items: Vec<Value>, rv: u64) -> Value {
    json!({"kind": format!("{}List", kind.kind), "apiVersion": kind.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": items})
}

/// Requests served, by method (for benchmarks: API requests per reconcile).
pub static REQUESTS: [std::sync::atomic::AtomicU64; 6] =
    [const { std::sync::atomic::AtomicU64::new(0) }; 6];

/// Index into [`REQUESTS`]: GET, POST, PUT, PATCH, DELETE, other.
pub fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::PATCH => 3,
        Method::DELETE => 4,
        _ => 5,
    }
}

/// A request carrying this header is left out of the store's audit (the tests' own client).
pub const UNAUDITED: &str = "x-qis-unaudited";

/// The verb an authorizer would check for this request. A server-side apply that creates the
/// object needs `create` too (Kubernetes checks both).
fn verbs_of(
    method: &Method,
    target: &Target,
    watch: bool,
    exists: bool,
    apply: bool,
) -> Vec<&'static str> {
    match (method, &target.name) {
        (&Method::GET, None) if watch => vec!["watch"],
        (&Method::GET, None) => vec!["list"],
        (&Method::GET, Some(_)) => vec!["get"],
        (&Method::POST, _) => vec!["create"],
        (&Method::PUT, _) => vec!["update"],
        (&Method::PATCH, _) if apply && !exists => vec!["patch", "create"],
        (&Method::PATCH, _) => vec!["patch"],
        (&Method::DELETE, Some(_)) => vec!["delete"],
        (&Method::DELETE, None) => vec!["deletecollection"],
        _ => vec![],
    }
}

/// The one handler: every API request goes through here.
pub async fn handle(
    State(store): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    REQUESTS[method_index(&method)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = uri.path().to_owned();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let wants_table = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"));
    match segments.as_slice() {
        ["version"] => {
            return json_response(
                StatusCode::OK,
                &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-qis-standin", "platform": "linux/amd64"}),
            );
        }
        ["healthz"] | ["readyz"] | ["livez"] => return (StatusCode::OK, "ok").into_response(),
        ["api"] => {
            return json_response(
                StatusCode::OK,
                &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
            );
        }
        ["apis"] => return json_response(StatusCode::OK, &group_list(&lock(&store))),
        ["api", v] => {
            return resource_list(&lock(&store), "", v).map_or_else(
                || error(&ApiError::new(404, "NotFound", "no such version")),
                |r| json_response(StatusCode::OK, &r),
            );
        }
        ["apis", g, v] => {
            return resource_list(&lock(&store), g, v).map_or_else(
                || error(&ApiError::new(404, "NotFound", "no such group")),
                |r| json_response(StatusCode::OK, &r),
            );
        }
        _ => {}
    }
    let target = match parse_target(&lock(&store), &segments) {
        Ok(t) => t,
        Err(e) => return error(&e),
    };
    let q = query(&uri);
    let ns = target.namespace.clone().unwrap_or_default();
    if !headers.contains_key(UNAUDITED) {
        let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
        let apply = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("application/apply-patch"));
        let mut s = lock(&store);
        let exists = target
            .name
            .as_ref()
            .is_some_and(|n| s.get(&target.kind, &ns, n).is_ok());
        let resource = match &target.subresource {
            Some(sub) => format!("{}/{sub}", target.kind.plural),
            None => target.kind.plural.clone(),
        };
        for verb in verbs_of(&method, &target, watch, exists, apply) {
            s.audit
                .insert((target.kind.group.clone(), resource.clone(), verb.to_owned()));
        }
    }
    let status_only = target.subresource.as_deref() == Some("status");
    if target.subresource.as_deref().is_some_and(|s| s != "status") {
        return error(&ApiError::new(
            404,
            "NotFound",
            "subresource not served by the stand-in",
        ));
    }
    let result: Result<(StatusCode, Value), ApiError> = match (&method, &target.name) {
        (&Method::GET, None) => {
            let labels = match LabelSelector::parse(
                q.get("labelSelector").map(String::as_str).unwrap_or(""),
            ) {
                Ok(l) => l,
                Err(e) => return error(&ApiError::new(400, "BadRequest", e)),
            };
            let fields = match FieldSelector::parse(
                q.get("fieldSelector").map(String::as_str).unwrap_or(""),
            ) {
                Ok(f) => f,
                Err(e) => return error(&ApiError::new(400, "BadRequest", e)),
            };
            if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                return watch(store, target.kind, target.namespace, labels, fields, &q);
            }
            let s = lock(&store);
            let items = s.list(&target.kind, target.namespace.as_deref(), &labels, &fields);
            let rv = s.resource_version();
            Ok((
                StatusCode::OK,
                if wants_table {
                    table::table(&target.kind, &items, rv)
                } else {
                    with_list_kind(&target.kind, items, rv)
                },
            ))
        }
        (&Method::GET, Some(name)) => {
            let s = lock(&store);
            s.get(&target.kind, &ns, name).map(|o| {
                (
                    StatusCode::OK,
                    if wants_table {
                        table::table(&target.kind, &[o], s.resource_version())
                    } else {
                        o
                    },
                )
            })
        }
        (&Method::POST, None) => parse_body(&headers, &body)
            .and_then(|b| lock(&store).create(&target.kind, &ns, b))
            .map(|o| (StatusCode::CREATED, o)),
        (&Method::PUT, Some(name)) => parse_body(&headers, &body)
            .and_then(|b| lock(&store).replace(&target.kind, &ns, name, b, status_only))
            .map(|o| (StatusCode::OK, o)),
        (&Method::PATCH, Some(name)) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let type_ = if ct.starts_with("application/json-patch") {
                PatchType::Json
            } else if ct.starts_with("application/apply-patch") {
                PatchType::Apply
            } else {
                PatchType::Merge
            };
            parse_body(&headers, &body)
                .and_then(|b| lock(&store).patch(&target.kind, &ns, name, type_, &b, status_only))
                .map(|o| (StatusCode::OK, o))
        }
        (&Method::DELETE, Some(name)) => lock(&store)
            .delete(&target.kind, &ns, name)
            .map(|o| (StatusCode::OK, o)),
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported on {path}"),
        )),
    };
    match result {
        Ok((code, v)) => json_response(code, &v),
        Err(e) => error(&e),
    }
}

/// FNV-1a, for short stable hashes (pod-template hashes).
pub fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// The stand-in's HTTP app.
pub fn router(store: Shared) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(store)
}

fn line(type_: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": type_, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// A watch: the changes after `resourceVersion` (or the current objects as ADDED), then live
/// changes, until `timeoutSeconds`.
fn watch(
    store: Shared,
    kind: Kind,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    q: &HashMap<String, String>,
) -> Response {
    let rv: u64 = q
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let timeout = Duration::from_secs(
        q.get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(1800),
    );
    let (initial, mut rx, mut last) = {
        let s = lock(&store);
        let initial: Vec<Bytes> = if rv == 0 {
            s.list(&kind, ns.as_deref(), &labels, &fields)
                .iter()
                .map(|o| line("ADDED", o))
                .collect()
        } else {
            match s.changes_since(rv, &kind, ns.as_deref()) {
                Ok(changes) => changes
                    .iter()
                    .filter(|c| labels.matches(&c.object) && fields.matches(&c.object))
                    .map(|c| line(c.type_, &c.object))
                    .collect(),
                Err(e) => {
                    // Like the API server: a 200 with an ERROR event carrying 410.
                    let body = line("ERROR", &e.status());
                    return (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, "application/json")],
                        body,
                    )
                        .into_response();
                }
            }
        };
        (initial, s.tx.subscribe(), s.resource_version())
    };
    let (tx, out) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(1024);
    tokio::spawn(async move {
        for b in initial {
            if tx.send(Ok(b)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                got = rx.recv() => {
                    let change: Arc<Change> = match got {
                        Ok(c) => c,
                        // Lagged or closed: end the watch; the client resumes or relists.
                        Err(_) => return,
                    };
                    if change.rv <= last || change.group != kind.group || change.plural != kind.plural {
                        continue;
                    }
                    last = change.rv;
                    if ns.as_deref().is_some_and(|n| n != change.namespace) || !labels.matches(&change.object) || !fields.matches(&change.object) {
                        continue;
                    }
                    if tx.send(Ok(line(change.type_, &change.object))).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(out);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}
