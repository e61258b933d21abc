//! Objects, resource versions, watch history and the write rules of the API server that a
//! controller depends on: server-stamped metadata (uid, resourceVersion, generation,
//! creationTimestamp), no event for a write that changes nothing, status subresources,
//! optimistic concurrency, finalizers and deletionTimestamp, garbage collection by owner uid,
//! and CRD registration.

use crate::registry::{self, Kind};
use crate::selectors::{FieldSelector, LabelSelector};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use tokio::sync::broadcast;

/// Watch events kept for resuming watches from a resourceVersion.
const HISTORY: usize = 200_000;

/// An API error, rendered as a `Status`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }
    pub fn not_found(kind: &Kind, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{}.{} \"{name}\" not found", kind.plural, kind.group),
        )
    }
    pub fn status(&self) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code})
    }
}

/// One change, as watches deliver it.
#[derive(Debug, Clone)]
pub struct Change {
    pub rv: u64,
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub type_: &'static str,
    pub object: Value,
}

type Key = (String, String, String, String);

/// How a write is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Apply,
}

/// The object store.
#[derive(Debug)]
pub struct Store {
    pub kinds: Vec<Kind>,
    objects: BTreeMap<Key, Value>,
    rv: u64,
    uids: u64,
    history: VecDeque<Arc<Change>>,
    /// Changes up to this resourceVersion are no longer kept.
    forgotten: u64,
    pub tx: broadcast::Sender<Arc<Change>>,
    /// Mark Deployments ready as soon as they are written (a stand-in kubelet).
    pub auto_ready_deployments: bool,
    /// What was asked of the API, as an authorizer sees it: (API group, resource or
    /// `resource/subresource`, verb), for requests without the [`crate::server::UNAUDITED`]
    /// header (the tests' own client sends it; the operator does not).
    pub audit: std::collections::BTreeSet<(String, String, String)>,
}

fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    k8s_openapi::jiff::Timestamp::from_second(i64::try_from(secs).unwrap_or(0))
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The object without what the server stamps on every write, for no-op detection.
fn comparable(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    v
}

/// The object without metadata and status: what `generation` counts.
fn spec_part(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

/// JSON merge patch (RFC 7386).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("object just ensured");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Server-side apply, approximately: a deep merge of objects in which every list the applier
/// sends replaces the stored one. That matches real server-side apply where each list has one
/// owner (true of everything here: the operator owns `conditions`, `sites`, `consumers`; the
/// agents own `consensus`, an object key). Fields an applier stops sending are not removed (there
/// are no managedFields here).
pub fn apply_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                match t.get_mut(k) {
                    Some(existing) if !v.is_null() => apply_merge(existing, v),
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

impl Store {
    pub fn new(auto_ready_deployments: bool) -> Store {
        let (tx, _) = broadcast::channel(65_536);
        Store {
            kinds: registry::builtins(),
            objects: BTreeMap::new(),
            rv: 1,
            uids: 0,
            history: VecDeque::new(),
            forgotten: 0,
            tx,
            auto_ready_deployments,
            audit: Default::default(),
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// The served kind of `group` + `plural`.
    pub fn kind(&self, group: &str, plural: &str) -> Option<Kind> {
        self.kinds
            .iter()
            .find(|k| k.group == group && k.plural == plural)
            .cloned()
    }

    /// Changes after `rv` of one resource, or `Err` when they are no longer kept.
    pub fn changes_since(
        &self,
        rv: u64,
        kind: &Kind,
        namespace: Option<&str>,
    ) -> Result<Vec<Arc<Change>>, ApiError> {
        if rv < self.forgotten {
            return Err(ApiError::new(
                410,
                "Expired",
                format!("too old resource version: {rv} ({})", self.forgotten),
            ));
        }
        Ok(self
            .history
            .iter()
            .filter(|c| {
                c.rv > rv
                    && c.group == kind.group
                    && c.plural == kind.plural
                    && namespace.is_none_or(|n| n == c.namespace)
            })
            .cloned()
            .collect())
    }

    fn key(kind: &Kind, ns: &str, name: &str) -> Key {
        (
            kind.group.clone(),
            kind.plural.clone(),
            if kind.namespaced {
                ns.to_owned()
            } else {
                String::new()
            },
            name.to_owned(),
        )
    }

    fn record(&mut self, kind: &Kind, ns: &str, type_: &'static str, object: Value) {
        let change = Arc::new(Change {
            rv: self.rv,
            group: kind.group.clone(),
            plural: kind.plural.clone(),
            namespace: ns.to_owned(),
            type_,
            object,
        });
        self.history.push_back(change.clone());
        if self.history.len() > HISTORY
            && let Some(old) = self.history.pop_front()
        {
            self.forgotten = old.rv;
        }
        let _ = self.tx.send(change);
    }

    pub fn get(&self, kind: &Kind, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&Self::key(kind, ns, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind, name))
    }

    pub fn list(
        &self,
        kind: &Kind,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((g, p, n, _), _)| {
                *g == kind.group
                    && *p == kind.plural
                    && ns.is_none_or(|ns| !kind.namespaced || ns == n)
            })
            .map(|(_, v)| v)
            .filter(|v| labels.matches(v) && fields.matches(v))
            .cloned()
            .collect()
    }

    pub fn create(&mut self, kind: &Kind, ns: &str, mut body: Value) -> Result<Value, ApiError> {
        if !body.is_object() {
            return Err(ApiError::new(400, "BadRequest", "body must be an object"));
        }
        let name = body
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let name = match name {
            Some(n) if !n.is_empty() => n,
            _ => match body
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
            {
                Some(prefix) => format!("{prefix}{:05x}", self.uids + 1),
                None => {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        "metadata.name: Required value",
                    ));
                }
            },
        };
        let key = Self::key(kind, ns, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{}.{} \"{name}\" already exists", kind.plural, kind.group),
            ));
        }
        self.uids += 1;
        self.rv += 1;
        let meta = body["metadata"]
            .as_object_mut()
            .ok_or_else(|| ApiError::new(400, "BadRequest", "metadata must be an object"))?;
        meta.insert("name".into(), json!(name));
        if kind.namespaced {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        meta.insert(
            "uid".into(),
            json!(format!("00000000-0000-4000-8000-{:012x}", self.uids)),
        );
        meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
        meta.insert("generation".into(), json!(1));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.remove("deletionTimestamp");
        body["apiVersion"] = json!(kind.api_version());
        body["kind"] = json!(kind.kind);
        if kind.group == "apiextensions.k8s.io" {
            self.register_crd(&mut body)?;
        }
        self.objects.insert(key, body.clone());
        self.record(kind, ns, "ADDED", body.clone());
        self.after_write(kind, ns, &name);
        self.get(kind, ns, &name)
    }

    fn register_crd(&mut self, crd: &mut Value) -> Result<(), ApiError> {
        let k = Kind::from_crd(crd).ok_or_else(|| {
            ApiError::new(
                422,
                "Invalid",
                "CustomResourceDefinition: spec.group, names and versions are required",
            )
        })?;
        self.kinds
            .retain(|x| !(x.group == k.group && x.plural == k.plural));
        self.kinds.push(k);
        let t = now();
        crd["status"] = json!({"conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": t},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": t}
        ]});
        Ok(())
    }

    /// Writes `new` over the stored object (an update, patch or status write).
    fn write(
        &mut self,
        kind: &Kind,
        ns: &str,
        name: &str,
        mut new: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        let key = Self::key(kind, ns, name);
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        if let Some(rv) = new
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            && !rv.is_empty()
            && rv
                != old["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {}.{} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    kind.plural, kind.group
                ),
            ));
        }
        if status_only {
            let status = new.get("status").cloned();
            new = old.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        } else if kind.status_subresource {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        // The server owns these.
        for field in [
            "uid",
            "creationTimestamp",
            "name",
            "namespace",
            "generation",
            "resourceVersion",
            "deletionTimestamp",
        ] {
            match old["metadata"].get(field) {
                Some(v) => new["metadata"][field] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(field);
                    }
                }
            }
        }
        new["apiVersion"] = json!(kind.api_version());
        new["kind"] = json!(kind.kind);
        if spec_part(&new) != spec_part(&old) {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            new["metadata"]["generation"] = json!(generation);
        }
        if kind.group == "apiextensions.k8s.io" && !status_only {
            self.register_crd(&mut new)?;
        }
        if comparable(&new) == comparable(&old) {
            // A write that changes nothing: no new resourceVersion, no watch event.
            return Ok(old);
        }
        let deleting = new.pointer("/metadata/deletionTimestamp").is_some();
        let finalizers_left = new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if deleting && !finalizers_left {
            return self.remove(kind, ns, name);
        }
        self.rv += 1;
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(key, new.clone());
        self.record(kind, ns, "MODIFIED", new.clone());
        if !status_only {
            self.after_write(kind, ns, name);
        }
        self.get(kind, ns, name)
    }

    /// A stand-in kubelet: Deployments report their replicas ready.
    fn after_write(&mut self, kind: &Kind, ns: &str, name: &str) {
        if !(self.auto_ready_deployments && kind.group == "apps" && kind.plural == "deployments") {
            return;
        }
        let Ok(d) = self.get(kind, ns, name) else {
            return;
        };
        let replicas = d
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let mut new = d.clone();
        new["status"] = json!({"observedGeneration": d["metadata"]["generation"], "replicas": replicas,
            "readyReplicas": replicas, "availableReplicas": replicas, "updatedReplicas": replicas});
        let _ = self.write(kind, ns, name, new, true);
    }

    pub fn replace(
        &mut self,
        kind: &Kind,
        ns: &str,
        name: &str,
        body: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        self.write(kind, ns, name, body, status_only)
    }

    pub fn patch(
        &mut self,
        kind: &Kind,
        ns: &str,
        name: &str,
        type_: PatchType,
        patch: &Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        let current = match self.get(kind, ns, name) {
            Ok(c) => c,
            Err(e) if type_ == PatchType::Apply && !status_only => {
                let _ = e;
                let mut body = patch.clone();
                body["metadata"]["name"] = json!(name);
                return self.create(kind, ns, body);
            }
            Err(e) => return Err(e),
        };
        let mut new = current.clone();
        match type_ {
            PatchType::Merge => merge_patch(&mut new, patch),
            PatchType::Apply => {
                let mut p = patch.clone();
                if let Some(m) = p.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                apply_merge(&mut new, &p);
            }
            PatchType::Json => {
                // Like the API server (evanphx/json-patch): `test` of null on a missing path holds.
                let ops: Vec<Value> = patch
                    .as_array()
                    .map(|ops| {
                        ops.iter()
                            .filter(|op| {
                                let null_test = op["op"] == "test" && op["value"].is_null();
                                !(null_test
                                    && op["path"]
                                        .as_str()
                                        .is_some_and(|p| new.pointer(p).is_none()))
                            })
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                let ops: json_patch::Patch =
                    serde_json::from_value(Value::Array(ops)).map_err(|e| {
                        ApiError::new(400, "BadRequest", format!("invalid JSON patch: {e}"))
                    })?;
                json_patch::patch(&mut new, &ops).map_err(|e| {
                    ApiError::new(422, "Invalid", format!("the JSON patch failed: {e}"))
                })?;
            }
        }
        if type_ != PatchType::Json
            && let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut)
        {
            // A patch is not a compare-and-swap unless it says so (only JSON patch tests do).
            m.insert(
                "resourceVersion".into(),
                current["metadata"]["resourceVersion"].clone(),
            );
        }
        self.write(kind, ns, name, new, status_only)
    }

    /// Deletes, or marks for deletion while finalizers remain.
    pub fn delete(&mut self, kind: &Kind, ns: &str, name: &str) -> Result<Value, ApiError> {
        let current = self.get(kind, ns, name)?;
        let has_finalizers = current
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if !has_finalizers {
            return self.remove(kind, ns, name);
        }
        if current.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok(current);
        }
        let mut new = current;
        self.rv += 1;
        new["metadata"]["deletionTimestamp"] = json!(now());
        new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(Self::key(kind, ns, name), new.clone());
        self.record(kind, ns, "MODIFIED", new.clone());
        Ok(new)
    }

    fn remove(&mut self, kind: &Kind, ns: &str, name: &str) -> Result<Value, ApiError> {
        let mut gone = self
            .objects
            .remove(&Self::key(kind, ns, name))
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        self.rv += 1;
        gone["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(kind, ns, "DELETED", gone.clone());
        if kind.group == "apiextensions.k8s.io"
            && let Some(k) = Kind::from_crd(&gone)
        {
            self.kinds
                .retain(|x| !(x.group == k.group && x.plural == k.plural));
        }
        if let Some(uid) = gone
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_owned)
        {
            self.collect_garbage(&uid);
        }
        Ok(gone)
    }

    /// Background cascading deletion: everything whose owner references name `uid`.
    fn collect_garbage(&mut self, uid: &str) {
        let dependents: Vec<(Kind, String, String)> = self
            .objects
            .iter()
            .filter(|(_, v)| {
                v.pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| {
                        refs.iter()
                            .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
                    })
            })
            .filter_map(|((g, p, n, name), _)| {
                self.kind(g, p).map(|k| (k, n.clone(), name.clone()))
            })
            .collect();
        for (k, ns, name) in dependents {
            let _ = self.delete(&k, &ns, &name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployments(s: &Store) -> Kind {
        s.kind("apps", "deployments").unwrap()
    }

    #[test]
    fn metadata_is_stamped_and_noop_writes_are_silent() {
        let mut s = Store::new(false);
        let k = deployments(&s);
        let mut rx = s.tx.subscribe();
        let d = s
            .create(
                &k,
                "ns",
                json!({"metadata": {"name": "a"}, "spec": {"replicas": 1}}),
            )
            .unwrap();
        assert_eq!(d["metadata"]["generation"], 1);
        assert_eq!(d["metadata"]["namespace"], "ns");
        assert!(d["metadata"]["uid"].is_string());
        let rv = s.resource_version();
        s.patch(
            &k,
            "ns",
            "a",
            PatchType::Merge,
            &json!({"spec": {"replicas": 1}}),
            false,
        )
        .unwrap();
        assert_eq!(s.resource_version(), rv, "no-op write");
        let d = s
            .patch(
                &k,
                "ns",
                "a",
                PatchType::Merge,
                &json!({"spec": {"replicas": 2}}),
                false,
            )
            .unwrap();
        assert_eq!(d["metadata"]["generation"], 2);
        let d = s
            .patch(
                &k,
                "ns",
                "a",
                PatchType::Merge,
                &json!({"status": {"readyReplicas": 2}}),
                false,
            )
            .unwrap();
        assert!(
            d.get("status").is_none(),
            "main resource writes do not touch status"
        );
        let d = s
            .patch(
                &k,
                "ns",
                "a",
                PatchType::Merge,
                &json!({"status": {"readyReplicas": 2}, "spec": {"replicas": 9}}),
                true,
            )
            .unwrap();
        assert_eq!(
            (
                d["status"]["readyReplicas"].as_i64(),
                d["spec"]["replicas"].as_i64(),
                d["metadata"]["generation"].as_i64()
            ),
            (Some(2), Some(2), Some(2))
        );
        let types: Vec<&str> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|c| c.type_)
            .collect();
        assert_eq!(types, ["ADDED", "MODIFIED", "MODIFIED"]);
    }

    #[test]
    fn optimistic_concurrency() {
        let mut s = Store::new(false);
        let k = s.kind("coordination.k8s.io", "leases").unwrap();
        let l = s
            .create(
                &k,
                "ns",
                json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}}),
            )
            .unwrap();
        let mut stale = l.clone();
        s.replace(&k, "ns", "l", json!({"metadata": {"name": "l", "resourceVersion": l["metadata"]["resourceVersion"]}, "spec": {"holderIdentity": "b"}}), false).unwrap();
        stale["spec"]["holderIdentity"] = json!("c");
        assert_eq!(
            s.replace(&k, "ns", "l", stale, false).unwrap_err().code,
            409
        );
    }

    #[test]
    fn finalizers_hold_deletion_and_gc_follows_owners() {
        let mut s = Store::new(false);
        let k = deployments(&s);
        let owner = s
            .create(
                &k,
                "ns",
                json!({"metadata": {"name": "owner", "finalizers": ["x/y"]}}),
            )
            .unwrap();
        let uid = owner["metadata"]["uid"].clone();
        s.create(&k, "ns", json!({"metadata": {"name": "child", "ownerReferences": [{"uid": uid, "name": "owner", "kind": "Deployment", "apiVersion": "apps/v1"}]}})).unwrap();
        let marked = s.delete(&k, "ns", "owner").unwrap();
        assert!(marked["metadata"]["deletionTimestamp"].is_string());
        assert!(s.get(&k, "ns", "child").is_ok());
        let patch = json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "x/y"}, {"op": "remove", "path": "/metadata/finalizers/0"}]);
        s.patch(&k, "ns", "owner", PatchType::Json, &patch, false)
            .unwrap();
        assert_eq!(s.get(&k, "ns", "owner").unwrap_err().code, 404);
        assert_eq!(
            s.get(&k, "ns", "child").unwrap_err().code,
            404,
            "garbage collected"
        );
    }

    #[test]
    fn apply_merges_objects_and_replaces_lists() {
        let mut t =
            json!({"status": {"sites": [{"name": "a"}, {"name": "c"}], "consensus": {"a": 1}}});
        apply_merge(
            &mut t,
            &json!({"status": {"sites": [{"name": "a"}, {"name": "b"}]}}),
        );
        assert_eq!(t["status"]["sites"], json!([{"name": "a"}, {"name": "b"}]));
        assert_eq!(
            t["status"]["consensus"]["a"], 1,
            "another manager's field stays"
        );
    }

    #[test]
    fn crds_register_kinds() {
        let mut s = Store::new(false);
        let k = s
            .kind("apiextensions.k8s.io", "customresourcedefinitions")
            .unwrap();
        let crd = json!({"metadata": {"name": "qisswarms.qis.dev"}, "spec": {"group": "qis.dev", "scope": "Namespaced",
            "names": {"kind": "QisSwarm", "plural": "qisswarms", "shortNames": ["qsw"]},
            "versions": [{"name": "v1alpha1", "served": true, "storage": true, "subresources": {"status": {}}}]}});
        let created = s.create(&k, "", crd).unwrap();
        assert_eq!(created["status"]["conditions"][1]["type"], "Established");
        let qsw = s.kind("qis.dev", "qisswarms").unwrap();
        assert!(qsw.status_subresource && qsw.namespaced);
        assert_eq!(s.changes_since(0, &qsw, None).unwrap().len(), 0);
    }
}
